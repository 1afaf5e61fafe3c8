"""The coordinator's side of the demo, replayed: which CNN recipe learns most from a pool.

Issues 12 and 13 ask whether the *downstream* side (the CNN the coordinator trains on the
pooled synthetic images) can carry more of what the generators learned to the sites' real
test images. A ``synthlearn demo`` run leaves everything needed to answer that offline:
``OUT/coordinator/pool/pooled`` (the verified pool the coordinator trained on; a two-round
run's second pool is ``pool-round2``) and each
site's store with its real test split (``OUT/sites/site-*/``), which in a real federation
never leaves the site. So this replays only the last two steps of a finished demo, with
several CNN recipes ("arms") on the **same pool and the same test images**:

1. For every run folder given and every arm: train the coordinator's CNN on the run's pool
   (the run's own CNN config, with the arm's changes; a fixed number of epochs instead of
   the demo's wall-clock cap, so that load on the machine cannot favour an arm).
2. Score it on every site's real test split (ROC AUC), and compare it with the ``demo``
   arm (the demo's recipe) by DeLong's paired test on the same images.

The arms differ only in the CNN recipe: augmentation that the seed paper's recipe lacks
(intensity: gamma, contrast, noise; stronger geometry), and weight decay. A lever is worth
keeping if it wins across runs, seeds and sites, not in one of them.

Run (each folder a finished ``synthlearn demo --out DIR``)::

    python benchmarks/pool_replay.py /tmp/demo-a /tmp/demo-b --out /tmp/pool-replay

Results: ``OUT/results.json`` (after every run) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARMS: dict[str, dict[str, Any]] = {
    "demo": {},
    "intensity": {"gamma_jitter": 0.4, "contrast_jitter": 0.3, "noise_std": 0.05},
    "geometry": {"rotation_deg": 10.0, "crop_scale_min": 0.6},
    "strong": {"gamma_jitter": 0.4, "contrast_jitter": 0.3, "noise_std": 0.05,
               "rotation_deg": 10.0, "crop_scale_min": 0.6},
    "wd": {"weight_decay": 1e-3},
    "teacher": {"_pool": "teacher"},
    "filter": {"_pool": "filter"},
    "ens2": {"_members": 2},
    "ens3-w8": {"_members": 3, "width": 8},
    "select3x3": {"_select": (3, 3)},
    "select3x3-adabn": {"_select": (3, 3), "_batchnorm": "site", "_versus": "select3x3"},
    "select3x3-either": {"_select": (3, 3), "_batchnorm": "either", "_versus": "select3x3"},
    "select1x10": {"_select": (1, 10)},
    "library": {"_select": (2, 3), "_per_site": True},
    "round1-select3x3": {"_select": (3, 3), "_round1": True},
    "both-select3x3": {"_select": (3, 3), "_both": True},
}
"""The recipes compared; ``demo`` is the demo's own (the run's ``cnn-config.json``). Keys
starting with ``_`` change the pool, not the recipe: ``teacher`` trains on each site's
classifier S's probabilities for its own synthetic images (``node generate --teacher``: the
pooled CNN distils classifiers that saw real images), ``filter`` drops the synthetic images
whose own site's S gives their class < 0.5 (``node generate --filter 0.5``). ``_members``: K
CNNs (seeds s … s+K−1) scored as one ensemble (mean probability). ``_select`` (members,
epochs): the product's own path since issue 12's candidate sets, end to end — the
coordinator's ``train_pooled`` keeps every epoch of ``members`` seeds, and each site chooses
its ensemble on its real train split (``node.evaluate.choose_on_train_split``) before its test
split is scored. ``_per_site``: the candidates also include one CNN per site's part of the pool
(every epoch), so a site can lean on the generators that suit it (not in the product).
``_round1``: for a ``synthlearn demo --rounds 2`` run, the same path on the run's *round-1*
pool, rebuilt from its round-1 bundles by the product's own pooling; against ``select3x3``
(the round-2 pool) it is round 2's effect, paired on the same test images. ``_both``: the
product's two-round path, candidates from both pools in one file (``train_pooled`` with
``round2``), each site choosing among all of them. ``_batchnorm``: how each site treats the
candidates' BatchNorm statistics (``node.selection.BATCHNORM``: "site" re-estimates them on its
real train split first, "either" chooses among the candidates as sent and adapted); the
candidates are the same as ``select3x3``'s. ``_versus``: the arm is also compared (DeLong,
paired) with that arm when both are asked for (that arm then runs first)."""


def site_dirs(run: Path) -> list[Path]:
    """The run's site folders (``RUN/sites/site-*`` with a store), in site order."""
    return sorted(p for p in (run / "sites").iterdir() if (p / "site.json").exists())


def load_run(run: Path, epochs: int, splits: tuple[Literal["train", "test"], ...], **changes: Any
             ) -> tuple[Any, Any, dict[tuple[str, str], tuple[Any, Any]]]:
    """(pool, the run's CNN config with a fixed epoch count and ``changes``, the sites' real
    ``splits`` keyed by (site, split)). The demo's wall-clock cap is dropped so that load on
    the machine cannot change how long a CNN trains."""
    import numpy as np

    from node.store import SiteStore
    from shared.cnn_train import ClassifierConfig
    from shared.config import from_mapping
    from shared.synthetic import SyntheticSet

    # the pool the run ended with: round 2's in a two-round demo (round 1's stays in pool/)
    last = run / "coordinator" / "pool-round2"
    pool = SyntheticSet.load((last if last.is_dir() else run / "coordinator" / "pool")
                             / "pooled")
    doc = json.loads((run / "coordinator" / "cnn" / "cnn-config.json").read_text())
    base = replace(from_mapping(ClassifierConfig, doc, source=str(run)), max_minutes=None,
                   epochs=epochs, **changes)
    real: dict[tuple[str, str], tuple[Any, Any]] = {}
    for site in site_dirs(run):
        store = SiteStore.open(site)
        for split in splits:
            x, y = store.load(split, "binary")
            real[(site.name, split)] = (x, np.asarray(y, np.int64))
    return pool, base, real


def site_pools(run: Path) -> Any:
    """The run's pool rebuilt from every site's generator with S's probabilities attached.

    Each site draws again what it drew in the demo (same run, seed and count, so the same
    images) with ``teacher=True``; the sets are concatenated in site order, as the pool is."""
    import numpy as np

    from node.generate import generate
    from shared.synthetic import SyntheticSet

    timing = json.loads((run / "demo-timing.json").read_text())
    seed, n = timing["seed"], timing["n_synthetic"]
    sets = []
    for site in site_dirs(run):
        sets.append(generate(site, n, run_name="demo", seed=seed, out_name="replay-teacher",
                             teacher=True))
    names = sets[0].class_names
    x = np.concatenate([s.images for s in sets])
    y = np.concatenate([s.labels for s in sets])
    soft = np.concatenate([s.soft for s in sets])
    return SyntheticSet(x, y, names, {"synthetic_only": True}, soft=soft)


def round1_pool(run: Path) -> Any:
    """A two-round demo's round-1 pool: its round-1 bundles (``coordinator/bundles``, kept
    when round 2 replaced them) verified and pooled by :func:`coordinator.pool.pool_bundles`
    with the run's trust folder, in memory."""
    import tempfile

    from coordinator.pool import pool_bundles
    from coordinator.state import CoordinatorState

    bundles = sorted((run / "coordinator" / "bundles").glob("*.slbundle"))
    if not (run / "coordinator" / "bundles-round2").is_dir():
        raise SystemExit(f"{run}: not a two-round demo (no coordinator/bundles-round2)")
    with tempfile.TemporaryDirectory() as tmp:
        state = CoordinatorState(Path(tmp) / "state.db")
        try:
            res = pool_bundles(bundles, run / "coordinator" / "trust", state, "round1")
        finally:
            state.close()
    if res.pooled is None or res.rejected:
        raise SystemExit(f"{run}: round-1 bundles did not all verify: {res.rejected}")
    return res.pooled


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versus_first(arms: list[str]) -> list[str]:
    """``arms`` in the order they run: an arm's ``_versus`` arm, when also asked for, before
    it (the paired comparison needs its scores), the rest as given."""
    ordered: list[str] = []
    for arm in arms:
        versus = ARMS[arm].get("_versus")
        if versus in arms and versus not in ordered:
            ordered.append(versus)
        if arm not in ordered:
            ordered.append(arm)
    return ordered


def replay_run(run: Path, arms: list[str], epochs: int,
               cnn_seeds: list[int] | None = None) -> dict[str, Any]:
    """Every arm's CNN on ``run``'s pool, scored on every site's real test split. With
    ``cnn_seeds``, each arm trains one CNN per seed and is scored as their ensemble (mean
    probability); each seed's own AUC is kept too (how much one CNN varies by its seed)."""
    import numpy as np

    from shared.cnn_train import predict_scores, train_classifier
    from shared.metrics.auc import class_auc
    from shared.metrics.paired import delong_paired

    arms = versus_first(arms)
    pool, base, real = load_run(run, epochs, ("test",))
    tests = {site: xy for (site, _), xy in real.items()}
    out: dict[str, Any] = {"run": str(run), "seed": base.seed, "n_pool": len(pool), "arms": {}}
    scores: dict[str, dict[str, Any]] = {}
    teacher_pool = None
    for arm in arms:
        t0 = time.monotonic()
        per_seed: dict[int, dict[str, Any]] = {}
        probs: dict[str, list[Any]] = {name: [] for name in tests}
        epochs_run = []
        recipe = {k: v for k, v in ARMS[arm].items() if not k.startswith("_")}
        x_tr, y_tr, soft_tr = pool.images, pool.labels, pool.soft
        if ARMS[arm].get("_pool"):
            if teacher_pool is None:
                teacher_pool = site_pools(run)
                same = (teacher_pool.images.shape == pool.images.shape
                        and bool((teacher_pool.images == pool.images).all()))
                out["teacher_pool_matches_demo_pool"] = same
            x_tr, y_tr = teacher_pool.images, teacher_pool.labels
            if ARMS[arm]["_pool"] == "teacher":
                soft_tr = teacher_pool.soft
            else:
                keep = teacher_pool.soft[np.arange(len(y_tr)), y_tr] >= 0.5
                x_tr, y_tr = x_tr[keep], y_tr[keep]
                print(f"{run.name} filter keeps {int(keep.sum())} of {len(keep)}", flush=True)
        members = int(ARMS[arm].get("_members", 1))
        chosen: dict[str, Any] = {}
        if ARMS[arm].get("_select"):
            n_members, n_epochs = ARMS[arm]["_select"]
            first = round1_pool(run) if ARMS[arm].get("_round1") or ARMS[arm].get(
                "_both") else None
            per_seed[base.seed], chosen = select_at_sites(
                run, first if ARMS[arm].get("_round1") else pool, base, recipe,
                tests, n_members, n_epochs, probs,
                per_site=bool(ARMS[arm].get("_per_site")),
                round1=first if ARMS[arm].get("_both") else None,
                batchnorm=str(ARMS[arm].get("_batchnorm", "sent")))
        for seed in [] if ARMS[arm].get("_select") else (
                cnn_seeds or [base.seed + i for i in range(members)]):
            cfg = replace(base, seed=seed, **recipe)
            trained = train_classifier(x_tr, y_tr, len(pool.class_names), cfg,
                                       progress=False, soft_labels=soft_tr)
            epochs_run.append(len(trained.history))
            per_seed[seed] = {}
            for name, (x, y) in tests.items():
                p = predict_scores(trained.model, x)[:, 1]
                probs[name].append(p)
                per_seed[seed][name] = class_auc(y, np.stack([1 - p, p], 1))
        secs = time.monotonic() - t0
        rec: dict[str, Any] = {"seconds": round(secs, 1), "epochs_run": epochs_run,
                               "per_seed": per_seed, "sites": {}, "site_choices": chosen}
        scores[arm] = {}
        for name, (_x, y) in tests.items():
            p = np.mean(probs[name], axis=0)  # one CNN, or the seeds' ensemble
            scores[arm][name] = p
            site_rec: dict[str, Any] = {"auc": class_auc(y, np.stack([1 - p, p], 1)),
                                        "n_test": len(y)}
            seed_aucs = [per_seed[s][name] for s in per_seed]
            if len(seed_aucs) > 1:
                site_rec.update(seed_mean=float(np.mean(seed_aucs)),
                                seed_sd=float(np.std(seed_aucs, ddof=1)),
                                seed_min=float(np.min(seed_aucs)))
            if arm != "demo" and "demo" in scores:
                d = delong_paired(y, scores["demo"][name], p)
                site_rec.update(delta=d.delta, p=d.p_value, ci=[d.ci_low, d.ci_high])
            versus = ARMS[arm].get("_versus")
            if versus in scores:
                d = delong_paired(y, scores[versus][name], p)
                site_rec["versus"] = {"arm": versus, "delta": d.delta, "p": d.p_value,
                                      "ci": [d.ci_low, d.ci_high]}
            rec["sites"][name] = site_rec
        out["arms"][arm] = rec
        print(f"{run.name} {arm:10s} " + " ".join(
            f"{n} {r['auc']:.3f}" + (f" ({r['delta']:+.3f})" if "delta" in r else "")
            + (f" [seeds {r['seed_mean']:.3f}±{r['seed_sd']:.3f}, min {r['seed_min']:.3f}]"
               if "seed_sd" in r else "")
            + (f" [vs {r['versus']['arm']} {r['versus']['delta']:+.3f} p "
               f"{r['versus']['p']:.3f}]" if "versus" in r else "")
            for n, r in rec["sites"].items()) + f"  {secs:.0f} s", flush=True)
    return out


def pool_parts(run: Path, pool: Any) -> list[Any]:
    """The pool split back into each site's part (the pool keeps site order; the demo's
    per-site sets are class-balanced, so balancing dropped nothing — checked)."""
    import sqlite3

    from shared.synthetic import SyntheticSet

    with sqlite3.connect(run / "coordinator" / "state.db") as db:
        row = db.execute("select result from phases where phase='pool'").fetchone()
    doc = json.loads(row[0])
    sizes = [int(a["images"]) for a in doc["accepted"]]
    if sum(sizes) != len(pool) or doc.get("duplicates_dropped") or doc.get("balanced_dropped"):
        raise SystemExit(f"{run}: the pool is not the sites' sets in order; cannot split it")
    parts, start = [], 0
    for n in sizes:
        parts.append(SyntheticSet(pool.images[start:start + n], pool.labels[start:start + n],
                                  pool.class_names, {"synthetic_only": True}))
        start += n
    return parts


def select_at_sites(run: Path, pool: Any, base: Any, recipe: dict[str, Any],
                    tests: dict[str, Any], members: int, epochs: int,
                    probs: dict[str, list[Any]], per_site: bool = False,
                    round1: Any = None, batchnorm: str = "sent"
                    ) -> tuple[dict[str, float], dict[str, Any]]:
    """The product's path: candidates from ``coordinator.train.train_pooled``, each site's
    choice on its real train split (``node.evaluate``), that ensemble on its test split.
    Appends each site's test probabilities to ``probs``; returns (site → test AUC, site →
    how it chose). ``round1``: a two-round run's first pool, whose candidates join
    ``pool``'s (round 2's) in one file, as the coordinator does."""
    import tempfile

    import numpy as np

    from coordinator.train import train_pooled
    from node.evaluate import choose_on_train_split
    from shared.cnn_train import predict_scores
    from shared.metrics.auc import class_auc
    from shared.weights_io import load_candidates

    cfg = replace(base, epochs=epochs, patience=0, **recipe)
    sets = [pool] + (pool_parts(run, pool) if per_site else [])
    nets: list[Any] = []
    meta: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, part in enumerate(sets):
            path = Path(tmp) / f"candidates-{i}.npz"
            if i == 0 and round1 is not None:
                train_pooled(round1, path, cfg, progress=False, members=members, round2=part)
            else:
                train_pooled(part, path, cfg, progress=False, members=members if i == 0 else 1)
            more, part_meta = load_candidates(path)
            if i == 0:  # its default indexes the pooled CNNs, which come first
                meta = part_meta
            nets += more
    aucs, chosen = {}, {}
    for name, (x, y) in tests.items():
        model, sel = choose_on_train_split(nets, meta, run / "sites" / name, "binary",
                                           meta.get("input_size"), batchnorm=batchnorm)
        p = predict_scores(model, x)[:, 1]
        probs[name].append(p)
        aucs[name] = class_auc(y, np.stack([1 - p, p], 1))
        chosen[name] = {k: sel.get(k) for k in ("picked", "adapted", "n_images", "picked_rounds")
                        if k in sel}
    return aucs, chosen


def trace_run(run: Path, epochs: int, cnn_seeds: list[int], out_dir: Path) -> dict[str, Any]:
    """Model selection with and without real images: the demo recipe (no early stopping) per
    seed, every epoch's weights scored on every site's real *train* split and *test* split.

    The coordinator picks the epoch by its synthetic validation part, where AUC is 1.0 from
    the first epochs on; a site's real train split is independent of a CNN trained on
    synthetic images only, so it could pick the epoch (and the seed) instead, without
    touching the test split. Returns test AUCs under each way of choosing."""
    import numpy as np

    from shared.cnn_train import predict_scores, train_classifier
    from shared.metrics.auc import class_auc

    pool, base, splits = load_run(run, epochs, ("train", "test"), patience=0)
    sites = sorted({k[0] for k in splits})

    def auc(y: Any, p: Any) -> float:
        return class_auc(y, np.stack([1 - p, p], 1))

    # probs[seed][epoch][(site, split)]
    probs: dict[int, dict[int, dict[tuple[str, str], Any]]] = {}
    chosen: dict[int, int] = {}
    for seed in cnn_seeds:
        probs[seed] = {}

        def record(epoch: int, model: Any, seed: int = seed) -> None:
            probs[seed][epoch] = {k: predict_scores(model, x)[:, 1] for k, (x, _) in
                                  splits.items()}

        trained = train_classifier(pool.images, pool.labels, len(pool.class_names),
                                   replace(base, seed=seed), progress=False, on_epoch=record)
        chosen[seed] = int(trained.val_metrics["best_epoch"])
        print(f"{run.name} seed {seed}: synthetic-val epoch {chosen[seed]}", flush=True)
    tag = run.name if run.name != "demo-output" else run.parent.name
    np.savez_compressed(out_dir / f"trace-{tag}.npz",
                        **{f"s{s}_e{e}_{k[0]}_{k[1]}": v for s, es in probs.items()
                           for e, ks in es.items() for k, v in ks.items()})
    aucs = {s: {e: {k: auc(splits[k][1], v) for k, v in ks.items()} for e, ks in es.items()}
            for s, es in probs.items()}

    def train_score(s: int, e: int) -> float:  # mean over sites of the real train-split AUC
        return float(np.mean([aucs[s][e][(n, "train")] for n in sites]))

    def test_of(s: int, e: int) -> dict[str, float]:
        return {n: aucs[s][e][(n, "test")] for n in sites}

    def ens(pairs: list[tuple[int, int]]) -> dict[str, float]:
        return {n: auc(splits[(n, "test")][1],
                       np.mean([probs[s][e][(n, "test")] for s, e in pairs], 0)) for n in sites}

    res: dict[str, Any] = {"run": str(run), "seeds": cnn_seeds}
    res["synthetic_val"] = {s: test_of(s, chosen[s]) for s in cnn_seeds}
    res["last_epoch"] = {s: test_of(s, epochs) for s in cnn_seeds}
    best_e = {s: max(probs[s], key=lambda e: train_score(s, e)) for s in cnn_seeds}
    res["real_train_epoch"] = {s: test_of(s, best_e[s]) for s in cnn_seeds}
    res["real_train_epoch_chosen"] = best_e
    pairs = [(s, e) for s in cnn_seeds for e in probs[s]]
    top = pairs[int(np.argmax([train_score(s, e) for s, e in pairs]))]
    res["real_train_seed_and_epoch"] = {"choice": top, **test_of(*top)}
    res["ensemble_synthetic_val"] = ens([(s, chosen[s]) for s in cnn_seeds])
    res["ensemble_real_train_epoch"] = ens([(s, best_e[s]) for s in cnn_seeds])
    return res


def summary(results: list[dict[str, Any]], arms: list[str]) -> str:
    import numpy as np

    lines = ["| arm | mean AUC over site tests | mean Δ vs demo | sites better / worse "
             "(p < 0.05) | min AUC | time ratio |", "|---|---|---|---|---|---|"]
    for arm in arms:
        aucs, deltas, better, worse, ratio = [], [], 0, 0, []
        for r in results:
            rec = r["arms"].get(arm)
            if rec is None:
                continue
            ratio.append(rec["seconds"] / r["arms"]["demo"]["seconds"])
            for s in rec["sites"].values():
                aucs.append(s["auc"])
                if "delta" in s:
                    deltas.append(s["delta"])
                    better += s["p"] < 0.05 and s["delta"] > 0
                    worse += s["p"] < 0.05 and s["delta"] < 0
        lines.append(
            f"| {arm} | {np.mean(aucs):.3f} | "
            + (f"{np.mean(deltas):+.3f}" if deltas else "–")
            + f" | {better} / {worse} | {np.min(aucs):.3f} | {np.mean(ratio):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished `synthlearn demo` folders")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--arms", default=",".join(ARMS), help="comma list of " + ", ".join(ARMS))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--cnn-seeds", default="",
                    help="comma list: one CNN per seed per arm, scored as an ensemble "
                         "(default: the run's own seed, one CNN)")
    ap.add_argument("--trace", action="store_true",
                    help="model-selection study instead of arms (see trace_run); needs "
                         "--cnn-seeds")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        ap.error(f"unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARMS)}")
    if arms[0] != "demo":
        arms = ["demo"] + [a for a in arms if a != "demo"]
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    doc: dict[str, Any] = {
        "command": "python benchmarks/pool_replay.py " + " ".join(sys.argv[1:]),
        "cpu": cpu_model(), "cores": os.cpu_count(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="minutes"), "arms": ARMS,
    }
    if args.trace:
        seeds = [int(v) for v in args.cnn_seeds.split(",") if v] or [0, 1]
        for run in args.runs:
            results.append(trace_run(run, args.epochs, seeds, args.out))
            doc["results"] = results
            (args.out / "results.json").write_text(json.dumps(doc, indent=1, default=float))
        return 0
    for run in args.runs:
        results.append(replay_run(run, arms, args.epochs,
                                   [int(v) for v in args.cnn_seeds.split(",") if v]))
        doc["results"] = results
        (args.out / "results.json").write_text(json.dumps(doc, indent=1, default=float))
    print(summary(results, arms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
