"""Utility of the synthetic sets written by ``benchmarks/privacy_audit.py`` (stand-in for the
PneumoniaMNIST DP benchmark): one fixed CNN recipe per set, ROC AUC on the site's real
held-out split, next to the same CNN trained on the real train split.

Run after ``privacy_audit.py``::

    python benchmarks/privacy_utility.py --out /tmp/pb --sets gan dp-eps10 dp-eps1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="privacy_audit.py's --out")
    ap.add_argument("--sets", nargs="+", default=["gan"])
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()

    from node.store import SiteStore
    from shared.cnn_train import ClassifierConfig, predict_scores, train_classifier
    from shared.metrics.auc import auc_with_ci
    from shared.synthetic import SyntheticSet

    site = args.out / "site"
    store = SiteStore.open(site)
    x_test, y_test = store.load("test")
    cfg = ClassifierConfig(epochs=args.epochs, width=16, patience=3, seed=0)
    results: dict[str, Any] = {}
    for name in ["real-train", *args.sets]:
        t = time.monotonic()
        if name == "real-train":
            x, y = store.load("train")
        else:
            s = SyntheticSet.load(site / "synthetic" / name)
            x, y = s.images, s.labels
        model = train_classifier(x, y, 2, cfg, progress=False)
        r = auc_with_ci(y_test, predict_scores(model.model, x_test)[:, 1], n_boot=1000)
        results[name] = {"auc": r.auc, "ci": [r.ci_low, r.ci_high], "n_train": len(y),
                         "seconds": round(time.monotonic() - t, 1)}
        print(name, json.dumps(results[name]), flush=True)
    (args.out / "utility.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
