"""Measures defined once (DESIGN §4): AUC with bootstrap CI, GAN-train/GAN-test, distribution
scores in a *named* encoder's feature space.

Submodules import torch/scikit-learn lazily where they can, so importing this package is cheap.
"""
