"""Is the local-real CNN a fair opponent? Each site's local CNN retrained under other recipes.

``multisite.py`` judges joining by pooled − local on each site's own test. Its local CNN uses
the benchmark's recipe (12 epochs, early stopping after 3 epochs without a better AUC on a 10 %
validation part). On a site with 120 train images that part is 12 images, and the CNN stopped
after 20-40 optimizer steps: a gain over such a baseline could come from an undertrained
local CNN rather than from the pooled data. This benchmark retrains the local CNN of a
finished run under each recipe of :data:`RECIPES` (one lever each) on the very same train
images, scores it on the same test images, and compares it, DeLong paired, with the run's
stored local CNN and with its pooled arms.

The ``bench`` recipe is the run's own local configuration (its CNN config and
``local_min_steps``; 0 for runs made before that option): it must reproduce the stored local
AUC (same images, same order, same seed), which checks that the comparison is like for like. The
table reports every recipe, and "best local" is the best of them *on the test split*. That
choice favours the local side (no site could pick its recipe on its test images), so a gain
of the pooled arm over the best local recipe is a conservative figure.

Run::

    python benchmarks/local_recipe.py /tmp/sm-s0 /tmp/sm-s1 /tmp/sm-s2 --sites c \\
        --out /tmp/local-recipe.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.metrics.paired import delong_paired

RECIPES: dict[str, dict[str, Any]] = {
    "bench": {},
    "steps200": {"min_steps": 200},
    "steps400": {"min_steps": 400},
    "val20": {"val_fraction": 0.2},
    "epochs30": {"epochs": 30, "patience": 5},
    "epochs30-steps200": {"epochs": 30, "patience": 5, "min_steps": 200},
}
"""Recipe name → the ClassifierConfig fields it changes from the run's own configuration.
``min_steps`` trains at least that many optimizer steps before early stopping may end it."""

POOLED_ARMS = ("pooled", "pooled-selected", "pooled-selected-either")


def site_split(run: Path, site: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of a run's site store, in store order (the order ``multisite.py`` used)."""
    from node.store import SiteStore

    site_dir = run / "sites" / f"site-{site}"
    if not (site_dir / "site.json").is_file():
        raise SystemExit(f"{site_dir}: no site store (give a finished multisite.py run)")
    return SiteStore.open(site_dir).load(split)  # type: ignore[arg-type]


def run_recipes(run: Path, site: str, recipes: list[str]) -> dict[str, Any]:
    """Every recipe's local CNN on one site of one run, against the stored arms."""
    from sklearn.metrics import roc_auc_score

    from shared.cnn_train import ClassifierConfig, predict_scores, train_classifier

    results = json.loads((run / "results.json").read_text())
    with np.load(run / "scores.npz") as z:
        stored = {k: z[k] for k in z.files}
    test = f"site-{site}"
    x, y = site_split(run, site, "train")
    tx, ty = site_split(run, site, "test")
    if not np.array_equal(ty, stored[f"labels/{test}"]):
        raise SystemExit(f"{run}: site {site}'s store test split is not the one scored")
    base_cfg = dataclasses.replace(ClassifierConfig(**results["cnn_config"]),
                                   min_steps=results.get("local_min_steps", 0))
    local_stored = stored[f"local-{site}/{test}"]
    out: dict[str, Any] = {"run": str(run), "site": site, "n_train": len(y),
                           "n_test": len(ty), "stored_local_auc":
                           float(roc_auc_score(ty, local_stored)), "recipes": {}}
    probs: dict[str, np.ndarray] = {}
    for name in recipes:
        cfg = dataclasses.replace(base_cfg, **RECIPES[name])
        t0 = time.monotonic()
        trained = train_classifier(x, y, 2, cfg, progress=False)
        p = predict_scores(trained.model, tx)[:, 1]
        probs[name] = p
        out["recipes"][name] = {
            "auc": float(roc_auc_score(ty, p)),
            "vs_stored_local": delong_paired(ty, local_stored, p).to_dict(),
            "epochs_run": len(trained.history), "stopped": trained.stopped,
            "best_epoch": trained.val_metrics.get("best_epoch"),
            "seconds": round(time.monotonic() - t0, 1),
            # DeLong paired against every recipe run before it on the same test images.
            "vs_recipes": {other: delong_paired(ty, probs[other], p).to_dict()
                           for other in probs if other != name},
        }
    if "bench" in probs:
        out["bench_reproduces_stored"] = bool(np.allclose(probs["bench"], local_stored,
                                                          atol=1e-6))
    best = max(recipes, key=lambda r: out["recipes"][r]["auc"])
    out["best_local"] = best
    out["pooled_vs_best_local"] = {
        arm: delong_paired(ty, probs[best], stored[f"{arm}/{test}"]).to_dict()
        for arm in POOLED_ARMS if f"{arm}/{test}" in stored}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished multisite.py output folders")
    ap.add_argument("--sites", default="c", help="comma-separated site names (default c)")
    ap.add_argument("--recipes", default=",".join(RECIPES),
                    help=f"comma-separated, from {', '.join(RECIPES)}")
    ap.add_argument("--out", type=Path, default=None, help="write the table as JSON")
    args = ap.parse_args(argv)
    recipes = [r for r in args.recipes.split(",") if r]
    if unknown := set(recipes) - set(RECIPES):
        ap.error(f"--recipes: unknown {sorted(unknown)}; known: {', '.join(RECIPES)}")
    for run in args.runs:
        for f in ("results.json", "scores.npz"):
            if not (run / f).is_file():
                ap.error(f"{run / f}: missing (give a finished multisite.py run)")
    table = [run_recipes(run, s, recipes) for run in args.runs
             for s in args.sites.split(",") if s]
    for row in table:
        print(f"{row['run']} site {row['site']} ({row['n_train']} train, {row['n_test']} test):"
              f" stored local {row['stored_local_auc']:.3f}"
              + (f", bench reproduces it: {row['bench_reproduces_stored']}"
                 if "bench_reproduces_stored" in row else ""))
        for name, r in row["recipes"].items():
            d = r["vs_stored_local"]
            print(f"  {name:9s} AUC {r['auc']:.3f}  vs stored local {d['delta']:+.3f} "
                  f"(p {d['p_value']:.3f})  {r['epochs_run']} ep, {r['stopped']}, "
                  f"{r['seconds']} s")
            for other, d in r.get("vs_recipes", {}).items():
                print(f"    − {other}: {d['delta']:+.3f} (p {d['p_value']:.3f})")
        for arm, d in row["pooled_vs_best_local"].items():
            print(f"  {arm} − best local ({row['best_local']}): {d['delta']:+.3f} "
                  f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] p {d['p_value']:.4f}")
    if args.out is not None:
        args.out.write_text(json.dumps({"benchmark": "local_recipe", "recipes": RECIPES,
                                        "table": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
