"""Local real baseline: the CNN a hospital can train on its own real images alone.

It is the yardstick for everything synthetic: the report sets the pooled-synthetic AUC on
this site's test split beside this number. Training reads only the *train* split (early
stopping on a part carved from it, inside :func:`shared.cnn_train.train_classifier`); the
test split is opened only after training has returned.

Writes ``SITE/metrics/baseline.json`` (unsigned numbers-only payload, signed later by the
export step) and ``SITE/metrics/baseline-cnn.npz`` (weights, npz, stays on site unless the
admin chooses otherwise), plus the resolved config.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from node.errors import StoreError
from shared.cnn_train import ClassifierConfig
from shared.config import to_dict, write_resolved
from shared.files import atomic_write_bytes

BASELINE_KIND = "local_real_baseline"


def run_baseline(
    site_dir: Path,
    cfg: ClassifierConfig,
    classes: str = "binary",
    progress: bool = True,
    n_boot: int = 1000,
    device: str | None = None,
) -> dict[str, Any]:
    """Train on the site's real train split, score its real test split, save both."""
    from node.evaluate import score_test_split
    from node.store import SiteStore
    from shared import __version__
    from shared.cnn_train import train_classifier
    from shared.files import sha256_file
    from shared.weights_io import save_weights

    if classes not in ("binary", "lesion"):
        raise StoreError(f"classes must be 'binary' or 'lesion', got {classes!r}")
    site_dir = Path(site_dir)
    store = SiteStore.open(site_dir)
    names = store.class_names(classes)  # type: ignore[arg-type]
    images, labels = store.load("train", classes)  # type: ignore[arg-type]
    if len(labels) == 0:
        raise StoreError(f"{site_dir}: the site store has no training images")
    t0 = time.monotonic()
    trained = train_classifier(images, labels, len(names), cfg, progress=progress,
                               device=device)
    train_seconds = time.monotonic() - t0
    del images, labels
    # Only now is the test split read, by a function training code never calls.
    scores = score_test_split(trained.model, site_dir, classes, trained.threshold, n_boot,
                              cfg.seed)
    out_dir = site_dir / "metrics"
    weights = out_dir / "baseline-cnn.npz"
    save_weights(
        trained.model.cpu(),
        weights,
        {"classes": classes, "class_names": names, "threshold": trained.threshold,
         "trained_on": "local real train split", "config": to_dict(cfg)},
    )
    write_resolved(cfg, out_dir, "baseline-config.json")
    record: dict[str, Any] = {
        "kind": BASELINE_KIND,
        **scores,
        "n_train": trained.n_train,
        "n_val": trained.n_val,
        "threshold": trained.threshold,
        "best_epoch": trained.val_metrics.get("best_epoch"),
        "epochs_run": len(trained.history),
        "stopped": trained.stopped,
        "device": trained.device,
        "train_seconds": round(train_seconds, 2),
        "weights_sha256": sha256_file(weights),
        "config": to_dict(cfg),
        "software_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    atomic_write_bytes(
        out_dir / "baseline.json", (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    )
    return record
