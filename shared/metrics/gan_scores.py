"""GAN-train and GAN-test (Shmelkov et al., 2018, "How good is my GAN?", the GIST scores).

* **GAN-train**: a classifier trained on *synthetic* images, scored on *real* test images.
  High GAN-train means the synthetic set carries the class information of real data
  (diversity + fidelity of the class-conditional distribution): exactly the property the
  pooled CNN relies on.
* **GAN-test**: a classifier trained on *real* training images, scored on *synthetic* images.
  High GAN-test means synthetic images look like their class to a real-data classifier
  (fidelity); a GAN that memorises its training set also scores high here, so read it next
  to the memorization audit.

Both use the same CNN recipe (:mod:`shared.cnn_train`) and report AUC with a bootstrap CI
plus argmax accuracy (the paper's measure).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from shared.cnn_train import ClassifierConfig, predict_scores, train_classifier
from shared.metrics.auc import class_auc_with_ci


def _score(
    model: Any, x: npt.NDArray[np.uint8], y: npt.NDArray[np.int64], num_classes: int,
    n_boot: int, seed: int,
) -> dict[str, Any]:
    probs = predict_scores(model, x)
    res = class_auc_with_ci(y, probs, n_boot=n_boot, seed=seed)
    return {**res.to_dict(), "accuracy": float((probs.argmax(1) == y).mean()), "n_test": len(y)}


def gan_train(
    synth_images: npt.NDArray[np.uint8],
    synth_labels: npt.NDArray[np.int64],
    real_test_images: npt.NDArray[np.uint8],
    real_test_labels: npt.NDArray[np.int64],
    num_classes: int,
    cfg: ClassifierConfig,
    n_boot: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on synthetic, test on real."""
    trained = train_classifier(synth_images, synth_labels, num_classes, cfg, progress=progress)
    out = _score(trained.model, real_test_images, np.asarray(real_test_labels, np.int64),
                 num_classes, n_boot, cfg.seed)
    return {"metric": "GAN-train", "n_train": len(synth_labels), **out}


def gan_test(
    real_train_images: npt.NDArray[np.uint8],
    real_train_labels: npt.NDArray[np.int64],
    synth_images: npt.NDArray[np.uint8],
    synth_labels: npt.NDArray[np.int64],
    num_classes: int,
    cfg: ClassifierConfig,
    n_boot: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on real, test on synthetic."""
    trained = train_classifier(real_train_images, real_train_labels, num_classes, cfg,
                               progress=progress)
    out = _score(trained.model, synth_images, np.asarray(synth_labels, np.int64), num_classes,
                 n_boot, cfg.seed)
    return {"metric": "GAN-test", "n_train": len(real_train_labels), **out}
