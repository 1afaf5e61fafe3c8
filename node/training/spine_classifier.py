"""SpineGAN's frozen classifier S: trained once per run on the real train split, then reused.

S is trained on the *same* images the GAN sees, in the GAN's input space (after the 28 → 32
pad or the resize of :mod:`node.training.data`), so during training and filtering it receives
G's outputs exactly as it received real images: same resolution, same [−1, 1] range. It is
C's ResNet recipe (:func:`shared.cnn_train.train_classifier`) at a small width with a fixed
config, saved as an npz (no pickle) in the run folder and loaded on every later resume or
generation instead of being retrained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from node.errors import TrainingError

SPINE_NAME = "spine-classifier.npz"


def spine_path(run_dir: Path) -> Path:
    return run_dir / SPINE_NAME


def ensure_spine_classifier(
    run_dir: Path,
    images: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.int64],
    num_classes: int,
    *,
    resolution: int,
    epochs: int,
    width: int,
    seed: int,
    max_minutes: float | None = None,
    dp: bool = False,
    progress: bool = True,
) -> Any:
    """Load S from the run folder, or train and save it; returns the eval-mode model (CPU).

    ``images`` are uint8 in the GAN's input space (side ``resolution``).
    """
    from shared.weights_io import WeightsError, load_classifier, load_weights, save_weights

    path = spine_path(run_dir)
    if path.exists():
        try:
            _, meta = load_weights(path)
            model = load_classifier(path)
        except WeightsError as exc:
            raise TrainingError(
                f"{exc}. Delete {path} to retrain SpineGAN's classifier"
            ) from None
        if meta.get("num_classes") != num_classes or meta.get("resolution") != resolution:
            raise TrainingError(
                f"{path}: classifier was trained for {meta.get('num_classes')} classes at "
                f"{meta.get('resolution')}², this run needs {num_classes} at {resolution}²; "
                "delete it to retrain"
            )
        return model.eval()
    if dp:
        # TODO(privacy area): train S under DP-SGD (node.dp.DPSession on S) for SpineGAN+DP.
        raise TrainingError(
            "SpineGAN under DP needs its classifier S trained with DP-SGD too, which is not "
            "wired in yet; use --model gan with DP"
        )
    from shared.cnn_train import ClassifierConfig, train_classifier

    ccfg = ClassifierConfig(epochs=epochs, width=width, seed=seed, max_minutes=max_minutes,
                            patience=max(2, epochs))
    trained = train_classifier(images, labels, num_classes, ccfg, progress=progress,
                               device="cpu")
    meta = {
        "kind": "spinegan_classifier",
        "num_classes": num_classes,
        "resolution": resolution,
        "n_train": int(trained.n_train),
        "val_metrics": _jsonable(trained.val_metrics),
        "epochs": epochs,
        "width": width,
        "seed": seed,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(trained.model, path, meta)
    return trained.model.eval().cpu()


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    import json

    try:
        json.dumps(d)
        return d
    except TypeError:
        return {k: v for k, v in d.items() if isinstance(v, int | float | str | bool)}
