"""The downstream CNN the coordinator trains — on synthetic images only.

The coordinator never holds a real image; this module makes that checkable: the weights'
metadata names the bundles whose synthetic images trained them (``trained_on``,
``bundle_ids``, ``synthetic_only: true``) and the image count, and the training call only
ever receives a :class:`shared.synthetic.SyntheticSet` that came out of verified bundles.

Two kinds of CNN are trained with the same recipe (:mod:`shared.cnn_train`):

* **pooled**: on the pooled synthetic set of all accepted sites — the product;
* **own** (optional): on one site's own synthetic images — so the report can show what pooling
  adds over each site's synthetic data alone (DESIGN §4).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from shared.cnn_train import ClassifierConfig
from shared.synthetic import SyntheticSet
from shared.vocabulary import VOCABULARY, class_ids, class_mode


def train_pooled(pooled: SyntheticSet, out: Path, cfg: ClassifierConfig, *,
                 role: str = "pooled", progress: bool = True,
                 device: str | None = None) -> dict[str, Any]:
    """Train the CNN on ``pooled`` (synthetic only) and save npz weights to ``out``.

    Returns a record with the weights' path and SHA-256, the images it saw, the threshold and
    the training history summary; the same facts, but the threshold, are inside the weights'
    metadata (a site scores at its own threshold and refuses weights that carry one).
    """
    from shared.cnn_train import train_classifier
    from shared.config import to_dict
    from shared.files import sha256_file
    from shared.weights_io import save_weights

    info = dict(pooled.info)
    if info.get("synthetic_only") is False:
        raise ValueError("refusing to train the coordinator's CNN on a set not marked synthetic")
    t0 = time.monotonic()
    # Teacher labels when the bundles carried them: the CNN distils every site's classifier.
    trained = train_classifier(pooled.images, pooled.labels, len(pooled.class_names), cfg,
                               progress=progress, device=device, soft_labels=pooled.soft)
    seconds = time.monotonic() - t0
    bundle_ids = list(info.get("bundle_ids", []))
    meta = {
        "classes": class_mode(list(pooled.class_names)),
        "class_names": list(pooled.class_names),
        "class_ids": class_ids(pooled.class_names),
        "vocabulary": VOCABULARY if class_ids(pooled.class_names) else None,
        "trained_on": f"{role} synthetic images from {len(bundle_ids)} verified bundle(s)",
        "synthetic_only": True,
        "bundle_ids": bundle_ids,
        "sites": list(info.get("sites", [])),
        "n_images": len(pooled),
        # The side the CNN learned at: a site whose real images differ resizes to it, and
        # records that it did (node/evaluate.py), instead of scoring at a silent mismatch.
        "input_size": int(pooled.images.shape[1]),
        "teacher_labels": pooled.soft is not None,
        "counts": pooled.counts(),
        "role": role,
        "config": to_dict(cfg),
    }
    save_weights(trained.model.cpu(), out, meta)
    return {
        "role": role,
        "weights": str(out),
        "weights_sha256": sha256_file(out),
        "n_images": len(pooled),
        "teacher_labels": pooled.soft is not None,
        "counts": pooled.counts(),
        "sites": meta["sites"],
        "bundle_ids": bundle_ids,
        "threshold": trained.threshold,
        "n_train": trained.n_train,
        "n_val": trained.n_val,
        "epochs_run": len(trained.history),
        "stopped": trained.stopped,
        "val_metrics": {k: v for k, v in trained.val_metrics.items()
                        if isinstance(v, int | float | str | None)},
        "device": trained.device,
        "seconds": round(seconds, 2),
        "synthetic_only": True,
    }
