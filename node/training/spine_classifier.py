"""SpineGAN's frozen classifier S: trained once per run on the real train split, then reused.

S is trained on the *same* images the GAN sees, in the GAN's input space (after the 28 → 32
pad or the resize of :mod:`node.training.data`), so during training and filtering it receives
G's outputs exactly as it received real images: same resolution, same [−1, 1] range. It is
C's ResNet recipe (:func:`shared.cnn_train.train_classifier`) at a small width with a fixed
config, saved as an npz (no pickle) in the run folder and loaded on every later resume or
generation instead of being retrained.

Under DP (SpineGAN with ``--dp-epsilon``) S reads the same real images as D, so it is trained
with DP-SGD on its share of the budget (:func:`node.training.dp.split_budget`); its DP report
is kept in the npz's metadata and the run reports the composed ε
(:func:`node.training.dp.compose_reports`). An S trained without DP is never reused by a DP run.
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
    min_steps: int = 0,
    dp_budget: tuple[float, float] | None = None,
    progress: bool = True,
) -> Any:
    """Load S from the run folder, or train and save it; returns the eval-mode model (CPU).

    ``images`` are uint8 in the GAN's input space (side ``resolution``). ``dp_budget`` = (ε, δ)
    trains S with DP-SGD within that budget (and refuses a saved S trained without DP).
    """
    from shared.weights_io import WeightsError, load_classifier, load_weights, save_weights

    path = spine_path(run_dir)
    if path.exists():
        try:
            _, saved = load_weights(path)
            loaded = load_classifier(path)
        except WeightsError as exc:
            raise TrainingError(
                f"{exc}. Delete {path} to retrain SpineGAN's classifier"
            ) from None
        if saved.get("num_classes") != num_classes or saved.get("resolution") != resolution:
            raise TrainingError(
                f"{path}: classifier was trained for {saved.get('num_classes')} classes at "
                f"{saved.get('resolution')}², this run needs {num_classes} at {resolution}²; "
                "delete it to retrain"
            )
        if dp_budget is not None and not isinstance(saved.get("dp"), dict):
            raise TrainingError(
                f"{path}: this classifier was trained without DP and would leak outside the "
                "run's privacy budget; delete it (or use a new --run-name) to train it with "
                "DP-SGD"
            )
        return loaded.eval()
    model: Any
    meta: dict[str, Any] = {
        "kind": "spinegan_classifier",
        "num_classes": num_classes,
        "resolution": resolution,
        "epochs": epochs,
        "width": width,
        "seed": seed,
        "min_steps": min_steps if dp_budget is None else 0,
    }
    if dp_budget is not None:
        from node.training.dp import train_classifier_dp

        model, report = train_classifier_dp(
            images, labels, num_classes, target_epsilon=dp_budget[0], delta=dp_budget[1],
            epochs=epochs, width=width, seed=seed, max_minutes=max_minutes, progress=progress,
            device="cpu")
        meta.update(n_train=len(labels), dp=report)
    else:
        from shared.cnn_train import ClassifierConfig, train_classifier

        ccfg = ClassifierConfig(epochs=epochs, width=width, seed=seed, max_minutes=max_minutes,
                                patience=max(2, epochs), min_steps=min_steps)
        trained = train_classifier(images, labels, num_classes, ccfg, progress=progress,
                                   device="cpu")
        model = trained.model
        meta.update(n_train=int(trained.n_train), val_metrics=_jsonable(trained.val_metrics))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(model, path, meta)
    return model.eval().cpu()


def spine_dp_report(run_dir: Path) -> dict[str, Any] | None:
    """The DP report of the run's saved S, or None (no S, or S trained without DP)."""
    from shared.weights_io import load_weights

    path = spine_path(run_dir)
    if not path.exists():
        return None
    _, meta = load_weights(path)
    dp = meta.get("dp")
    return dp if isinstance(dp, dict) else None


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    import json

    try:
        json.dumps(d)
        return d
    except TypeError:
        return {k: v for k, v in d.items() if isinstance(v, int | float | str | bool)}
