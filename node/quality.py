"""How good is this site's synthetic set? Scores computed here, on real images that stay here.

The coordinator sees only synthetic images; whether they carry what the real ones carry can
be measured only where the real images are. After generating, a site computes:

* **GAN-train** (Shmelkov et al., 2018): a CNN trained on the synthetic set, scored on the
  site's real *test* split. High = the synthetic images teach what real ones teach.
* **GAN-test**: the site's own local real CNN (``metrics/baseline-cnn.npz``, trained on the
  real *train* split) scored on the synthetic images. High = synthetic images look like
  their class to a real-data model (fidelity; memorisation also scores high, so read it
  beside the audit).
* **Distribution scores** (FD, KD, precision, recall) between real train and synthetic images
  in the named domain encoder's space (:mod:`shared.metrics.distribution`).

Only the resulting numbers are written (``SITE/metrics/synthetic-quality.json``); the export
step signs them into the bundle with the rest of ``SITE/metrics``. No model, per-image score
or pixel is written.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared.files import atomic_write_json

QUALITY_FILE = "synthetic-quality.json"


def score_synthetic(site_dir: Path, synthetic_name: str, cfg: Any = None, *,
                    n_boot: int = 500, seed: int = 0) -> dict[str, Any]:
    """GAN-train, GAN-test and distribution scores of ``SITE/synthetic/<name>``; saved.

    ``cfg``: the :class:`shared.cnn_train.ClassifierConfig` of the GAN-train CNN (the site's
    baseline recipe, so GAN-train and the local real AUC are comparable); default: the
    recipe's defaults capped at half a minute.
    """
    from node.evaluate import score_test_split
    from node.store import SiteStore
    from shared.cnn_train import ClassifierConfig, predict_scores, train_classifier
    from shared.metrics.auc import MetricError, class_auc_with_ci
    from shared.metrics.distribution import distribution_scores
    from shared.metrics.encoders import get_encoder
    from shared.synthetic import SyntheticSet
    from shared.vocabulary import class_mode
    from shared.weights_io import load_classifier

    site_dir = Path(site_dir)
    t0 = time.monotonic()
    syn = SyntheticSet.load(site_dir / "synthetic" / synthetic_name)
    store = SiteStore.open(site_dir)
    classes = class_mode(syn.class_names)
    record: dict[str, Any] = {"kind": "synthetic_quality", "synthetic": synthetic_name,
                              "classes": classes, "n_synthetic": len(syn)}
    problems: list[str] = []
    try:  # GAN-train: synthetic → CNN → real test split
        cfg = cfg or ClassifierConfig(max_minutes=0.5, seed=seed)
        trained = train_classifier(syn.images, syn.labels, len(syn.class_names), cfg,
                                   progress=False)
        gt = score_test_split(trained.model, site_dir, classes, None, n_boot, seed,
                              expect_names=list(syn.class_names))
        record["gan_train"] = {k: gt[k] for k in ("auc", "ci_low", "ci_high", "n_test")}
    except Exception as exc:  # a failed score is reported, not fatal to the export
        problems.append(f"GAN-train: {exc}"[:200])
    local = site_dir / "metrics" / "baseline-cnn.npz"
    if local.is_file():  # GAN-test: the local real CNN → synthetic images
        try:
            probs = predict_scores(load_classifier(local), syn.images)
            if probs.shape[1] != len(syn.class_names):
                raise MetricError(f"the local CNN predicts {probs.shape[1]} classes, the "
                                  f"synthetic set has {len(syn.class_names)}")
            res = class_auc_with_ci(syn.labels, probs, n_boot=n_boot, seed=seed)
            record["gan_test"] = {"auc": res.auc, "ci_low": res.ci_low, "ci_high": res.ci_high,
                                  "accuracy": float((probs.argmax(1) == syn.labels).mean())}
        except Exception as exc:
            problems.append(f"GAN-test: {exc}"[:200])
    try:
        real, _ = store.load("train", classes)  # type: ignore[arg-type]
        ds = distribution_scores(real, syn.images, get_encoder("domain"), max_samples=1000,
                                 seed=seed)
        record["distribution"] = {k: v for k, v in ds.to_dict().items()  # pr_label has a "/"
                                  if isinstance(v, int | float | str) and k != "pr_label"}
    except Exception as exc:
        problems.append(f"distribution: {exc}"[:200])
    record["problems"] = problems
    record["seconds"] = round(time.monotonic() - t0, 2)
    record["created_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    record = json.loads(json.dumps(record, default=_plain))
    atomic_write_json(site_dir / "metrics" / QUALITY_FILE, record)
    return record


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"{type(v).__name__} is not a number")
