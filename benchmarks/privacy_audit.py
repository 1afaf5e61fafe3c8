"""Privacy benchmark (issue 5): memorization-audit numbers on phantoms, with and without DP.

Scenarios, all against one phantom site (``node.phantoms.phantom_store``, patient-level split):

1. **ideal** — fresh phantoms from the same generator (new "patients"): what a perfect,
   non-memorising generator would score. Copy rate ≈ 1 − percentile/100 by construction.
2. **planted** — the ideal set with 5 % exact training images and 5 % lightly noised ones
   (σ = 4 grey levels) planted in: detection rate of the planted images, gate verdict.
3. **gan** — our GAN trained on the site (``node.training.train``, ``--minutes``), then
   ``node.generate.generate``; audited as a site would (``node.audit.run_audit``).
4. **dp-gan** — the same with ``--dp-epsilon`` (one run per value; ``--dp-kimg`` plans the
   budget), reporting ε spent next to the audit.

Run::

    python benchmarks/privacy_audit.py --out /tmp/privacy-bench
    python benchmarks/privacy_audit.py --out /tmp/pb --minutes 5 --dp-epsilon 10 --dp-kimg 2

Writes ``OUT/results.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np


def phantoms(n: int, size: int, seed: int, exposure: float = 1.0) -> np.ndarray:
    """New phantom patients (``exposure`` < 1: the same scanner curve, darker)."""
    from node.phantoms import LESION_CLASSES, render

    rng = np.random.default_rng([seed, 11])
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        lesion = LESION_CLASSES[0] if i % 2 == 0 else LESION_CLASSES[1 + (i // 2) % 4]
        img = render(rng, lesion, size, exposure * float(np.exp(rng.normal(0, 0.1))))
        out[i] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return out


def row(name: str, s: dict[str, Any], seconds: float, extra: dict[str, Any] | None = None
        ) -> dict[str, Any]:
    emb = next((v for k, v in s["views"].items() if k != "pixel"), None)
    return {
        "scenario": name,
        "n_synthetic": s["n_synthetic"],
        "copy_rate_pixel": s["copy_rate"],
        "copy_rate_embedding": emb["copy_rate"] if emb else None,
        "train_with_copy": s["train_with_copy"],
        "mia_auc_pixel": s["views"]["pixel"]["mia"]["auc"],
        "mia_ci_pixel": [s["views"]["pixel"]["mia"]["ci_low"],
                         s["views"]["pixel"]["mia"]["ci_high"]],
        "mia_auc_embedding": emb["mia"]["auc"] if emb else None,
        "control_auc_pixel": s["views"]["pixel"]["mia_control"]["auc"],
        "epsilon": (s.get("dp") or {}).get("epsilon_spent"),
        "gates_passed": s["gates_passed"],
        "audit_seconds": round(seconds, 1),
        **(extra or {}),
    }


def audit_set(site: Path, name: str, images: np.ndarray, labels: np.ndarray,
              info: dict[str, Any]) -> tuple[dict[str, Any], float]:
    from node.audit import AuditConfig, run_audit
    from shared.synthetic import SyntheticSet

    SyntheticSet(images, labels, ["normal", "abnormal"], info).save(site / "synthetic" / name)
    t = time.monotonic()
    summary = run_audit(site, name, AuditConfig(), progress=False)
    shutil.copy(site / "audit" / "report.html", site / "audit" / f"report-{name}.html")
    return summary, time.monotonic() - t


def sample(site: Path, run_name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``node.generate.generate`` when it exists; else the run's EMA generator directly (ψ = 1,
    balanced classes; identical for stores whose size is the GAN resolution)."""
    try:
        from node.generate import generate
    except ImportError:
        generate = None
    if generate is not None:
        syn = generate(site, n, run_name=run_name, out_name=run_name, seed=seed)
        return syn.images, syn.labels, "node.generate"
    import torch

    from node.training.loop import load_trained
    from shared.synthetic import from_tensor_range

    G, meta = load_trained(site / "runs" / run_name)
    if (meta.get("transform") or {}).get("kind", "none") not in ("none", "identity"):
        raise SystemExit("fallback sampler only handles stores at the GAN resolution")
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(meta["class_names"])
    images = []
    with torch.no_grad():
        for s in range(0, n, 256):
            z = torch.randn(len(labels[s:s + 256]), G.z_dim, generator=gen)
            images.append(from_tensor_range(G(z, labels[s:s + 256]).squeeze(1).numpy()))
    return np.concatenate(images), labels.numpy(), "load_trained (benchmark fallback)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--n-real", type=int, default=1500)
    ap.add_argument("--n-synth", type=int, default=600)
    ap.add_argument("--minutes", type=float, default=10.0, help="GAN training budget")
    ap.add_argument("--dp-epsilon", type=float, action="append", default=[])
    ap.add_argument("--dp-kimg", type=float, default=2.0)
    ap.add_argument("--skip-gan", action="store_true")
    ap.add_argument("--reuse", action="store_true",
                    help="keep OUT/site and finished runs (train only what is missing)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from node.phantoms import phantom_store
    from node.store import SiteStore

    out: Path = args.out
    site = out / "site"
    if site.exists() and not args.reuse:
        shutil.rmtree(site)
    t0 = time.monotonic()
    if not (site / "site.json").exists():
        phantom_store(site, args.n_real, args.size, seed=args.seed)
    store = SiteStore.open(site)
    train, _ = store.load("train")
    results: list[dict[str, Any]] = []
    labels = np.arange(args.n_synth) % 2

    ideal = phantoms(args.n_synth, args.size, args.seed + 1000)
    s, sec = audit_set(site, "ideal", ideal, labels, {"run_name": "none"})
    results.append(row("ideal (fresh phantoms)", s, sec))
    print(json.dumps(results[-1]), flush=True)

    rng = np.random.default_rng(args.seed)
    planted = ideal.copy()
    k = max(1, round(0.05 * args.n_synth))
    where = rng.choice(args.n_synth, 2 * k, replace=False)
    src = rng.choice(len(train), 2 * k, replace=False)
    planted[where[:k]] = train[src[:k]]
    noisy = train[src[k:]].astype(np.float64) + rng.normal(0, 4.0, (k, args.size, args.size))
    planted[where[k:]] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    s, sec = audit_set(site, "planted", planted, labels, {"run_name": "none"})
    # Which planted images were flagged: recompute on the same arrays (the summary has no
    # per-image data by design).
    from node.audit import AuditConfig, audit_arrays

    test, _ = store.load("test")
    res = audit_arrays(planted, train, test, AuditConfig(encoder="none"))
    flagged = res.views[0].is_copy[where]
    results.append(row("planted 5 % exact + 5 % noised", s, sec, {
        "planted_detected_exact": float(flagged[:k].mean()),
        "planted_detected_noised": float(flagged[k:].mean())}))
    print(json.dumps(results[-1]), flush=True)

    if not args.skip_gan:
        from node.audit import run_audit
        from node.training import GanConfig
        from node.training import train as train_gan
        from shared.synthetic import SyntheticSet

        runs: list[tuple[str, GanConfig]] = [
            ("gan", GanConfig(max_minutes=args.minutes, seed=args.seed))]
        for eps in args.dp_epsilon:
            runs.append((f"dp-eps{eps:g}", GanConfig(kimg=args.dp_kimg, dp_epsilon=eps,
                                                     max_minutes=args.minutes * 3,
                                                     seed=args.seed)))
        for name, cfg in runs:
            t = time.monotonic()
            run_dir = site / "runs" / name
            if not (args.reuse and (run_dir / "metrics.json").exists()):
                train_gan(site, cfg, run_name=name, progress=False)
            train_s = time.monotonic() - t
            imgs, labs, how = sample(site, name, args.n_synth, args.seed)
            SyntheticSet(imgs, labs, ["normal", "abnormal"], {"run_name": name}).save(
                site / "synthetic" / name)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            t = time.monotonic()
            s = run_audit(site, name, AuditConfig(), progress=False)
            shutil.copy(site / "audit" / "report.html", site / "audit" / f"report-{name}.html")
            results.append(row(name, s, time.monotonic() - t, {
                "train_seconds": round(train_s, 1), "kimg": metrics.get("kimg"),
                "wall_s": metrics.get("wall_s"), "sampler": how,
                "config": json.loads((run_dir / "config.json").read_text())}))
            print(json.dumps(results[-1]), flush=True)

    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor()} {os.cpu_count()} cores",
        "args": {k: str(v) for k, v in vars(args).items()},
        "store": store.summary(),
        "total_seconds": round(time.monotonic() - t0, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print("\n| scenario | copy rate (pixel / emb.) | train w/ copy | MIA AUC pixel [CI] | "
          "control AUC | ε | gates |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        emb = "–" if r["copy_rate_embedding"] is None else f"{r['copy_rate_embedding']:.3f}"
        eps = "–" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        lo, hi = r["mia_ci_pixel"]
        print(f"| {r['scenario']} | {r['copy_rate_pixel']:.3f} / {emb} | "
              f"{r['train_with_copy']:.3f} | {r['mia_auc_pixel']:.3f} [{lo:.3f}–{hi:.3f}] | "
              f"{r['control_auc_pixel']:.3f} | {eps} | "
              f"{'pass' if r['gates_passed'] else 'FAIL'} |")


if __name__ == "__main__":
    main()
