"""GAN speed, memory and a short quality run on one device (what benchmarks/gpu_check.sh runs).

``speed``: s/kimg and peak memory of each preset at its resolution, on random images (speed
does not depend on content). Each preset is timed over ``--steps`` steps after ``--warmup``
untimed ones, so one R1 step in 16 is counted in its true proportion; the device is
synchronised only around the timed block. The memory estimate that guards training
(:func:`node.training.hardware.estimate_memory`) is printed next to the measured peak, to
calibrate it. ``quality``: a conditional GAN on phantom radiographs for ``--minutes``, then a
CNN trained on *real* phantoms scores *generated* images by their requested class: AUC well
above 0.5 means the class condition was learned (the same test as benchmarks/gan_bench.py).

``--tiny`` divides every width by 16 and caps the side at 32² so the whole script can be
rehearsed on a CPU in a minute or two (numbers meaningless, code paths the same).

    python benchmarks/gpu_bench.py speed --presets gpu-64,gpu-128 --out speed.jsonl
    python benchmarks/gpu_bench.py quality --res 128 --minutes 2.5 --out quality.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cfg(name: str, tiny: bool, **overrides: Any) -> Any:
    from node.training.config import preset_config
    from node.training.presets import preset_defaults

    d = preset_defaults(name)
    if tiny:
        overrides = {"channel_base": max(32, d.get("channel_base", 512) // 16),
                     "channel_max": max(8, d.get("channel_max", 256) // 16),
                     "channel_min": max(4, d.get("channel_min", 16) // 16),
                     "batch": 4, **overrides}
        overrides["resolution"] = min(int(overrides.get("resolution") or 32), 32)
    return preset_config(name, min_class_images=1, **overrides)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def speed(args: argparse.Namespace) -> list[dict[str, Any]]:
    from node.training.hardware import estimate_memory
    from node.training.loop import Trainer

    rows = []
    for spec in args.presets.split(","):
        name, _, res = spec.partition("@")  # "cpu@128": a preset at another resolution
        row: dict[str, Any] = {"preset": name, "device": args.device}
        try:
            over: dict[str, Any] = {"kimg": 1e9, "device": args.device, "amp": not args.fp32}
            if res:
                over["resolution"] = int(res)
            cfg = _cfg(name, args.tiny, **over)
            r = int(cfg.resolution or 32)
            rng = np.random.default_rng(0)
            x = rng.integers(0, 255, (args.images, r, r), dtype=np.uint8)
            y = np.arange(args.images) % 2
            dev = torch.device(args.device)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
            tr = Trainer(x, y, ["a", "b"], cfg, r, None, False)
            est = estimate_memory(tr.cfg, 2, args.images)
            for _ in range(args.warmup):
                tr.step()
            _sync(tr.device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                tr.step()
            _sync(tr.device)
            dt = time.perf_counter() - t0
            kimg = args.steps * tr.eff.batch / 1000
            row.update({
                "resolution": r, "batch": tr.eff.batch, "steps": args.steps,
                "params_G_M": round(sum(p.numel() for p in tr.G.parameters()) / 1e6, 2),
                "params_D_M": round(sum(p.numel() for p in tr.D.parameters()) / 1e6, 2),
                "s_per_kimg": round(dt / kimg, 2), "img_per_s": round(kimg * 1000 / dt, 1),
                "amp": str(tr.amp_dtype), "estimated_GiB": round(est.needed(tr.eff.batch)
                                                                 / 2**30, 2),
            })
            if tr.device.type == "cuda":
                row["peak_GiB"] = round(torch.cuda.max_memory_allocated(tr.device) / 2**30, 2)
                row["gpu"] = torch.cuda.get_device_name(tr.device)
            del tr
        except Exception as exc:  # one preset failing (OOM…) must not lose the others' rows
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            traceback.print_exc()
        print(json.dumps(row), flush=True)
        rows.append(row)
        if args.out:
            with Path(args.out).open("a") as fh:
                fh.write(json.dumps(row) + "\n")
    return rows


def quality(args: argparse.Namespace) -> dict[str, Any]:
    """Train on phantoms at ``--res`` for ``--minutes``; AUC of a real-data CNN on fakes."""
    import tempfile

    from node.phantoms import LESION_CLASSES, render
    from node.training.loop import load_trained, train_arrays
    from shared.cnn_train import ClassifierConfig, predict_scores, train_classifier
    from shared.metrics.auc import auc_with_ci

    res = 32 if args.tiny else args.res
    rng = np.random.default_rng(0)
    n = args.images

    def phantoms(k: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(k) % 2
        x = np.stack([np.clip(np.rint(render(rng, LESION_CLASSES[0] if c == 0 else
                                             LESION_CLASSES[1 + i % (len(LESION_CLASSES) - 1)],
                                             res) * 255), 0, 255).astype(np.uint8)
                      for i, c in enumerate(y)])
        return x, y

    t0 = time.perf_counter()
    x_tr, y_tr = phantoms(n)
    x_te, y_te = phantoms(max(100, n // 4))
    render_s = time.perf_counter() - t0
    cnn = ClassifierConfig(epochs=args.cnn_epochs, width=16 if args.tiny else 32, seed=0,
                           max_minutes=args.cnn_minutes)
    judge = train_classifier(x_tr, y_tr, 2, cnn, progress=False, device=args.device).model
    real_auc = auc_with_ci(y_te, predict_scores(judge, x_te)[:, 1], n_boot=200).to_dict()
    preset = args.preset or f"gpu-{args.res}"
    cfg = _cfg(preset, args.tiny, max_minutes=args.minutes, device=args.device,
               resolution=res, checkpoint_kimg=1e6, log_every=50)
    run = Path(tempfile.mkdtemp(prefix="gpu-bench-quality-"))
    train_arrays(x_tr, y_tr, ["normal", "abnormal"], cfg, run, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    G, _ = load_trained(run, device=args.device)
    gen = torch.Generator().manual_seed(1)
    fakes, labels = [], []
    with torch.no_grad():
        for c in (0, 1):
            for _ in range(math.ceil(args.fakes / 2 / 64)):
                z = torch.randn(64, G.z_dim, generator=gen).to(args.device)
                img = G(z, torch.full((64,), c, device=args.device)).float().clamp(-1, 1)
                fakes.append(((img[:, 0] + 1) * 127.5).round().byte().cpu().numpy())
                labels.append(np.full(64, c))
    xf, yf = np.concatenate(fakes), np.concatenate(labels)
    fake_auc = auc_with_ci(yf, predict_scores(judge, xf)[:, 1], n_boot=200).to_dict()
    out = {"preset": preset, "resolution": res, "device": args.device,
           "train_images": n, "render_s": round(render_s, 1), "gan": {
               k: metrics.get(k) for k in ("kimg", "steps", "s_per_kimg", "img_per_s",
                                           "wall_s", "amp", "stopped", "aug_p")},
           "real_cnn_auc_on_real_test": real_auc["auc"],
           "real_cnn_auc_on_generated": fake_auc["auc"],
           "generated_ci": [fake_auc.get("ci_low"), fake_auc.get("ci_high")],
           "ratio_generated_to_real": round(fake_auc["auc"] / real_auc["auc"], 3)}
    print(json.dumps(out), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["speed", "quality"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="CPU rehearsal sizes")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast (for comparison)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--presets", default="gpu-64,gpu-128,gpu-256,gpu-512")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--res", type=int, default=128)
    ap.add_argument("--preset", default=None)
    ap.add_argument("--minutes", type=float, default=2.5)
    ap.add_argument("--fakes", type=int, default=512)
    ap.add_argument("--cnn-epochs", type=int, default=8)
    ap.add_argument("--cnn-minutes", type=float, default=1.0)
    args = ap.parse_args()
    if args.mode == "speed":
        speed(args)
    else:
        quality(args)


if __name__ == "__main__":
    main()
