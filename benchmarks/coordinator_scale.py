"""The coordinator at consortium scale (issue 17): verify + pool, then the pooled CNN, at
3, 30 and 100 sites × 2,000 synthetic images each; time and peak memory per scale.

What runs is the coordinator's own code on real bundles:

1. **Bundles** (made once, then reused): per site a real Ed25519 key
   (:func:`shared.signing.generate_keypair`), its public key in the trust folder, and a
   signed bundle written by :func:`shared.bundle.write_bundle` (the export's writer: PNG
   members, SHA-256 manifest, signature) with 2,000 phantom-like images: an elliptic "chest"
   field with noise, a bright blob in the abnormal class, a per-site brightness and contrast.
   Every image differs (noise), so the pool keeps them all and balances 50/50.
2. **Per scale, in a fresh process** (so each peak is that scale's own): the first S bundles
   go through :func:`coordinator.pipeline.pool_step` (verify each, stage on disk, de-duplicate,
   balance, stream to ``pool/pooled/images.npy``), then
   :func:`coordinator.pipeline.train_step` without the per-site CNNs (the pooled CNN: the
   images read from disk batch by batch). Training is bounded by work, not time:
   ``--steps`` (default 30) optimizer steps of batch 64 at ``--width`` (default 8), drawn from
   the whole shuffled pool, then the recipe's usual validation pass over its held-out 10 %
   (which does grow with the pool). A full epoch at 100 sites is 2,800 such steps: on two
   shared cores that is hours, so the step count is fixed and the step rate reported.
3. **Peak memory** is the process's peak resident set size, ``resource.getrusage(RUSAGE_SELF)
   .ru_maxrss`` (it counts touched mapped pages too, so a pool read through a memory map would
   show up; page cache outside the process does not). It is read after the imports (the floor),
   after pooling and after training.

Times are wall clock. On a shared machine they carry the load of other jobs: the script
records the load average before and after each scale; compare the scales' *ratios*.

Run::

    nice -n 19 python benchmarks/coordinator_scale.py --out /tmp/coord-scale
    nice -n 19 python benchmarks/coordinator_scale.py --out /tmp/cs --sites 2 4 --images 200
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def phantom_images(n: int, size: int, site: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 (size, size) chest-like phantoms, half with a bright blob (label 1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) * 2 - 1
    body = np.clip(1.0 - (xx / 0.85) ** 2 - (yy / 0.95) ** 2, 0, 1) ** 0.5
    labels = (np.arange(n) % 2).astype(np.int64)
    gain = 0.7 + 0.3 * ((site * 37) % 11) / 10  # per-site contrast
    x = body[None] * (150 * gain) + 40 + rng.normal(0, 12, (n, size, size)).astype(np.float32)
    cx, cy = rng.uniform(-0.5, 0.5, (2, n)).astype(np.float32)
    r = rng.uniform(0.08, 0.2, n).astype(np.float32)
    blob = np.exp(-((xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2)
                  / (2 * r[:, None, None] ** 2))
    x += 70 * blob * labels[:, None, None]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), labels


def make_bundles(folder: Path, n_sites: int, n_images: int, size: int) -> float:
    """Keys, trust folder and signed bundles for ``n_sites`` sites (kept if already there)."""
    from shared.bundle import write_bundle
    from shared.signing import generate_keypair
    from shared.synthetic import SyntheticSet

    t0 = time.monotonic()
    trust = folder / "trust"
    trust.mkdir(parents=True, exist_ok=True)
    for s in range(n_sites):
        site = f"site-{s:03d}"
        out = folder / "bundles" / f"{site}.slbundle"
        if out.exists():
            continue
        keys = folder / "keys" / site
        if not (keys / "site.key").exists():
            generate_keypair(keys)
        shutil.copyfile(keys / "site.pub", trust / f"{site}.pub")
        images, labels = phantom_images(n_images, size, s, seed=1000 + s)
        write_bundle(out, SyntheticSet(images, labels, ["normal", "abnormal"]), site=site,
                     key_dir=keys, metrics={}, audit={"gates_passed": True,
                                                      "note": "benchmark phantoms"},
                     dp=None, config={"benchmark": "coordinator_scale"})
        print(f"\r  bundles {s + 1}/{n_sites}", end="", flush=True)
    print()
    return time.monotonic() - t0


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(folder: Path, n_sites: int, work: Path, steps: int, width: int) -> dict[str, Any]:
    """One scale, in this process: pool the first ``n_sites`` bundles, train the pooled CNN."""
    import torch

    from coordinator.pipeline import pool_step, train_step
    from coordinator.state import CoordinatorState
    from shared.cnn_train import ClassifierConfig

    torch.set_num_threads(1)  # on 2 cores shared by many jobs, a second thread mostly waits
    floor = _peak_mib()
    paths = sorted((folder / "bundles").glob("*.slbundle"))[:n_sites]
    if len(paths) < n_sites:
        raise SystemExit(f"only {len(paths)} bundles in {folder}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    state = CoordinatorState(work / "state.db")
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    pool = pool_step(state, "bench", paths, folder / "trust", work)
    pool_s = time.monotonic() - t0
    pool_peak = _peak_mib()
    cfg = ClassifierConfig(epochs=1, max_steps=steps, width=width, batch=64, patience=0)
    t1 = time.monotonic()
    trained = train_step(pool, work, cfg, own=False)
    train_s = time.monotonic() - t1
    images = int(pool["images"])
    side = int(np.load(work / "pool" / "pooled" / "images.npy", mmap_mode="r").shape[1])
    return {
        "sites": n_sites, "images": images, "rejected": len(pool["rejected"]),
        "pool_mib": round(images * side * side / 2**20, 1),
        "bundle_mib": round(sum(p.stat().st_size for p in paths) / 2**20, 1),
        "verify_pool_s": round(pool_s, 1), "train_s": round(train_s, 1),
        "steps": steps, "batch": 64, "n_val": trained["pooled"]["n_val"], "width": width,
        "stopped": trained["pooled"]["stopped"], "device": trained["pooled"]["device"],
        "rss_floor_mib": round(floor, 1), "rss_after_pool_mib": round(pool_peak, 1),
        "rss_peak_mib": round(_peak_mib(), 1),
        "load_before": round(load0, 1), "load_after": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sites", type=int, nargs="+", default=[3, 30, 100])
    ap.add_argument("--images", type=int, default=2000, help="images per site")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30, help="CNN optimizer steps (batch 64)")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    folder = args.out / f"bundles-{args.images}x{args.size}"
    if args.measure is not None:  # child: one scale, result as JSON on stdout's last line
        row = measure(folder, args.measure, args.out / "work", args.steps, args.width)
        print(json.dumps(row))
        return
    made_s = make_bundles(folder, max(args.sites), args.images, args.size)
    print(f"bundles ready in {made_s:.1f} s ({max(args.sites)} × {args.images} at {args.size}²)")
    rows = []
    for n in args.sites:
        cmd = [sys.executable, __file__, "--out", str(args.out), "--images", str(args.images),
               "--size", str(args.size), "--steps", str(args.steps), "--width",
               str(args.width), "--measure", str(n)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
        (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    base = rows[0]
    print("\n| sites | images | pool MiB | verify+pool s | ×  | CNN s | ×  | peak RSS MiB "
          "(floor / after pool / after CNN) | load |")
    for r in rows:
        print(f"| {r['sites']} | {r['images']} | {r['pool_mib']} | {r['verify_pool_s']} | "
              f"{r['verify_pool_s'] / base['verify_pool_s']:.1f} | {r['train_s']} | "
              f"{r['train_s'] / base['train_s']:.1f} | {r['rss_floor_mib']} / "
              f"{r['rss_after_pool_mib']} / {r['rss_peak_mib']} | "
              f"{r['load_before']}→{r['load_after']} |")


if __name__ == "__main__":
    main()
