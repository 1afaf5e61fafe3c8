"""GAN-train / GAN-test: a faithful synthetic set scores high; a label-swapped one fails."""

from __future__ import annotations

import numpy as np

from shared.cnn_train import ClassifierConfig
from shared.metrics.gan_scores import gan_test, gan_train
from tests.conftest import blob_images

CFG = ClassifierConfig(epochs=3, width=8, batch=16, patience=0, norm="group")


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    images, lesions = blob_images(n, 32, seed)
    return images, np.array([0 if s == "No finding" else 1 for s in lesions], np.int64)


def test_gan_train_and_gan_test() -> None:
    real_x, real_y = _data(64, 0)
    syn_x, syn_y = _data(64, 1)
    test_x, test_y = _data(40, 2)
    good = gan_train(syn_x, syn_y, test_x, test_y, 2, CFG, n_boot=50, progress=False)
    assert good["metric"] == "GAN-train" and good["auc"] > 0.9
    swapped = gan_train(syn_x, 1 - syn_y, test_x, test_y, 2, CFG, n_boot=50, progress=False)
    assert swapped["auc"] < 0.2
    gt = gan_test(real_x, real_y, syn_x, syn_y, 2, CFG, n_boot=50, progress=False)
    assert gt["metric"] == "GAN-test" and gt["auc"] > 0.9 and gt["n_test"] == 64
