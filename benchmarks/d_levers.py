"""Ablation of GAN levers (issue 12): FastGAN reconstruction, projected heads, batch size, ...

Protocol (a fixed WORK budget, so CPU contention cannot favour an arm):

1. One site: the PneumoniaMNIST train split (28² reflect-padded to 32²), SpineGAN (the lever
   ``d_projected`` reads its classifier S), today's defaults otherwise.
2. Arms (:data:`ARMS`): ``default`` (today, at ``--batch``), the D-side levers ``recon``,
   ``projected``, ``both``, mode seeking (``ms``), ``noaug``, and the batch sizes ``batch16`` /
   ``batch8`` (more optimizer steps per image shown: a few-minute CPU run makes only a few
   hundred steps at batch 32). Per seed, the arms' trainers are built with the same seed and
   advanced **interleaved, one step each**, every arm with its own saved torch RNG stream (so
   each one draws exactly what it would draw alone) until each has seen ``--kimg`` thousand
   real images, or (``--seconds``) until each has spent that many seconds in its own steps: equal
   compute rather than equal images, the fair budget for arms that change the cost per image
   (a smaller batch). Each arm's s/kimg counts only its own steps and is reported as a ratio
   to the default arm of the same seed: interleaving spreads any contention over all arms
   alike.
3. S is trained once (seed 0, in ``OUT/run``) and shared by every arm and seed: it is the
   site's classifier, not a part of the GAN being compared.
4. Each arm's EMA generator makes ``--n-synth`` images (balanced, fixed seed, ψ = 1, cropped
   back to 28²); a fixed CNN recipe is trained on them and scored by ROC AUC on the real
   ``val`` split with a bootstrap CI, and by DeLong's paired test against the default arm of
   the same seed (same val images, so the difference has a much smaller variance).

Run::

    python benchmarks/d_levers.py --out /tmp/d-levers --kimg 1 --seeds 0,1

or one process per seed (``--seeds 0 --threads 1`` and ``--seeds 1 --threads 1`` in two
``--out`` folders): each seed's arms are still interleaved, so ratios stay within one process.

Results: ``OUT/results.json`` (written after every seed) and a markdown table on stdout.
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
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.training.config import GanConfig  # noqa: E402
from node.training.data import to_output_space  # noqa: E402
from node.training.loop import Trainer  # noqa: E402
from shared.cnn_train import ClassifierConfig, predict_scores, train_classifier  # noqa: E402
from shared.metrics.auc import auc_with_ci  # noqa: E402
from shared.metrics.distribution import distribution_scores  # noqa: E402
from shared.metrics.encoders import get_encoder  # noqa: E402
from shared.metrics.paired import delong_paired  # noqa: E402
from shared.synthetic import from_tensor_range  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "pneumoniamnist" / "pneumoniamnist_trainval.npz"
ARMS: dict[str, dict[str, Any]] = {
    "default": {},
    "recon": {"d_recon": True},
    "projected": {"d_projected": True},
    "both": {"d_recon": True, "d_projected": True},
    "ms": {"g_diversity": 1.0},
    "ms-0.1": {"g_diversity": 0.1},
    "recon-ms": {"d_recon": True, "g_diversity": 1.0},
    "batch16": {"batch": 16},
    "batch8": {"batch": 8},
    "noaug": {"augment": "none"},
}
"""Arm name → GanConfig fields changed from today's SpineGAN defaults."""


def load_split(path: Path, split: str) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    with np.load(path, allow_pickle=False) as d:
        return (d[f"{split}_images"].astype(np.uint8),
                d[f"{split}_labels"].reshape(-1).astype(np.int64))


def load_store(site: Path) -> tuple[tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]],
                                    tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]]:
    """A site store's (train, test) splits, binary classes (e.g. a demo site's store)."""
    from node.store import SiteStore

    store = SiteStore.open(site)
    return store.load("train", "binary"), store.load("test", "binary")


def train_arms(x: npt.NDArray[np.uint8], y: npt.NDArray[np.int64], base: GanConfig,
               arms: list[str], run_dir: Path, seconds: float | None = None
               ) -> dict[str, dict[str, Any]]:
    """Advance every arm's trainer interleaved, step by step, to ``base.kimg`` (or, with
    ``seconds``, until each arm has spent that long in its own steps)."""
    trainers: dict[str, Trainer] = {}
    rng: dict[str, torch.Tensor] = {}
    for arm in arms:
        t = time.monotonic()
        trainers[arm] = Trainer(x, y, ["normal", "abnormal"], replace(base, **ARMS[arm]),
                                x.shape[-1], run_dir, progress=False)
        rng[arm] = torch.get_rng_state()
        print(f"  [{arm}] built in {time.monotonic() - t:.0f} s", flush=True)
    secs = dict.fromkeys(arms, 0.0)
    timed = dict.fromkeys(arms, 0)
    before = dict.fromkeys(arms, 0)
    target = float(base.kimg or 1.0) * 1000

    def finished(arm: str) -> bool:
        return secs[arm] >= seconds if seconds else trainers[arm].nimg >= target

    while not all(finished(arm) for arm in trainers):
        for arm, tr in trainers.items():
            if finished(arm):
                continue
            torch.set_rng_state(rng[arm])
            t = time.monotonic()
            first = tr.step_count == 0
            tr.step()
            if not first:  # the first step carries one-time costs (allocations, thread start)
                secs[arm] += time.monotonic() - t
                timed[arm] += tr.nimg - before[arm]
            before[arm] = tr.nimg
            rng[arm] = torch.get_rng_state()
        done = ", ".join(f"{a} {tr.nimg / 1000:.2f}" for a, tr in trainers.items())
        print(f"  kimg: {done}", flush=True)
    return {arm: {"trainer": tr, "train_s": secs[arm], "kimg": tr.nimg / 1000,
                  "s_per_kimg": secs[arm] / max(timed[arm], 1) * 1000,
                  "stats": tr.read_stats()}
            for arm, tr in trainers.items()}


def stratified_subset(x: npt.NDArray[np.uint8], y: npt.NDArray[np.int64], n: int
                      ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """``n`` images with the split's class ratio, drawn with a fixed seed (same for every run)."""
    rng = np.random.default_rng(0)
    keep = np.concatenate([
        rng.choice(np.flatnonzero(y == k), round(n * float(np.mean(y == k))), replace=False)
        for k in np.unique(y)])
    keep.sort()
    return x[keep], y[keep]


@torch.no_grad()
def synthesize(tr: Trainer, n: int, seed: int
               ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    G = tr.G_ema.eval()
    gen = torch.Generator().manual_seed(seed)
    labels = np.repeat(np.arange(2), int(np.ceil(n / 2)))[:n].astype(np.int64)
    out = []
    for i in range(0, n, 500):
        c = torch.from_numpy(labels[i:i + 500])
        z = torch.randn(len(c), G.z_dim, generator=gen)
        x = to_output_space(G(z.to(tr.device), c.to(tr.device)).float().cpu(), tr.transform)
        out.append(from_tensor_range(x.squeeze(1).numpy()))
    return np.concatenate(out), labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--store", type=Path, default=None,
                    help="a site folder instead of --data: GAN on its train split, scores on "
                         "its test split (e.g. a demo site: OUT/sites/site-b)")
    ap.add_argument("--batch", type=int, default=64, help="GAN batch (the demo uses 16)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/d-levers"))
    ap.add_argument("--kimg", type=float, default=1.0, help="work budget per arm")
    ap.add_argument("--seconds", type=float, default=None,
                    help="compute budget per arm instead of --kimg (seconds of its own steps)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--speed", default="channels_last",
                    help="numeric mode for every arm (fixed: no per-arm probe)")
    ap.add_argument("--spine-max-minutes", type=float, default=3.0)
    ap.add_argument("--n-train", type=int, default=0,
                    help="train on a stratified random subset of this many real images (a small "
                         "site, where D-side levers are meant to help); 0 = all")
    ap.add_argument("--n-synth", type=int, default=2000)
    ap.add_argument("--cnn-epochs", type=int, default=3)
    ap.add_argument("--cnn-width", type=int, default=8)
    ap.add_argument("--cnn-seeds", type=int, default=1,
                    help="score the mean of this many CNN seeds per arm (less CNN noise)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads (1 when seeds run as parallel processes)")
    args = ap.parse_args()
    arms = args.arms.split(",")
    if arms[0] != "default" or any(a not in ARMS for a in arms):
        raise SystemExit(f"--arms: start with 'default', choose from {', '.join(ARMS)}")

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.store is not None:
        (x_tr, y_tr), (x_va, y_va) = load_store(args.store)
    else:
        x_tr, y_tr = load_split(args.data, "train")
        x_va, y_va = load_split(args.data, "val")
    if 0 < args.n_train < len(y_tr):
        x_tr, y_tr = stratified_subset(x_tr, y_tr, args.n_train)
    cnn = ClassifierConfig(epochs=args.cnn_epochs, width=args.cnn_width, batch=64, seed=0,
                           patience=args.cnn_epochs)
    base = GanConfig(model="spinegan", kimg=args.kimg, speed=args.speed, batch=args.batch,
                     spine_max_minutes=args.spine_max_minutes)
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "load_avg_start": os.getloadavg()},
        "n_train": len(y_tr), "n_val": len(y_va), "kimg": args.kimg,
        "seconds": args.seconds, "arms": ARMS,
        "cnn_config": {k: getattr(cnn, k) for k in cnn.__dataclass_fields__},
        "seeds": {},
    }
    for seed in [int(s) for s in args.seeds.split(",")]:
        print(f"seed {seed}", flush=True)
        trained = train_arms(x_tr, y_tr, replace(base, seed=seed), arms, args.out / "run",
                             seconds=args.seconds)
        rows: dict[str, Any] = {}
        scores: dict[str, npt.NDArray[np.float64]] = {}
        for arm, r in trained.items():
            xs, ys = synthesize(r["trainer"], args.n_synth, seed=1000 + seed)
            t = time.monotonic()
            # The mean of several CNN seeds: one CNN's seed alone moves a real-image AUC by
            # 0.03-0.10 (BENCHMARKS.md § The coordinator's CNN), which DeLong's CI ignores.
            scores[arm] = np.mean([predict_scores(train_classifier(
                xs, ys, 2, replace(cnn, seed=k), progress=False, device="cpu").model,
                x_va)[:, 1] for k in range(args.cnn_seeds)], axis=0)
            auc = auc_with_ci(y_va, scores[arm], n_boot=1000, seed=0)
            dist = distribution_scores(x_tr, xs, get_encoder("domain"), max_samples=1000, seed=0)
            rows[arm] = {"precision": dist.precision, "recall": dist.recall,
                         "kimg": r["kimg"], "train_s": r["train_s"],
                         "s_per_kimg": r["s_per_kimg"], "val_auc": auc.to_dict(),
                         "cnn_s": time.monotonic() - t, "last_stats": r["stats"]}
            print(f"  [{arm}] AUC {auc.auc:.3f} [{auc.ci_low:.3f}, {auc.ci_high:.3f}], "
                  f"precision {dist.precision:.2f}, recall {dist.recall:.2f}, "
                  f"{r['s_per_kimg']:.0f} s/kimg", flush=True)
        for arm in arms:
            rows[arm]["s_per_kimg_ratio_vs_default"] = (
                rows[arm]["s_per_kimg"] / rows["default"]["s_per_kimg"])
            if arm != "default":
                rows[arm]["delong_vs_default"] = delong_paired(
                    y_va, scores["default"], scores[arm]).to_dict()
        results["seeds"][str(seed)] = rows
        results["machine"]["load_avg_end"] = os.getloadavg()
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print_table(results)


def print_table(results: dict[str, Any]) -> None:
    print("| seed | arm | val AUC [95 % CI] | Δ vs default [DeLong 95 % CI] | precision | "
          "recall | s/kimg | × default |")
    print("|---|---|---|---|---|---|---|---|")
    for seed, rows in results["seeds"].items():
        for arm, r in rows.items():
            a = r["val_auc"]
            d = r.get("delong_vs_default")
            delta = (f"{d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
                     if d else "—")
            print(f"| {seed} | {arm} | {a['auc']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] "
                  f"| {delta} | {r.get('precision', float('nan')):.2f} "
                  f"| {r.get('recall', float('nan')):.2f} | {r['s_per_kimg']:.0f} "
                  f"| {r['s_per_kimg_ratio_vs_default']:.2f} |")


if __name__ == "__main__":
    main()
