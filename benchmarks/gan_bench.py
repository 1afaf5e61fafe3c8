"""GAN benchmark (issue 3): time-to-quality of our GAN / SpineGAN vs a plain conditional DCGAN.

Protocol:

1. Train each model on the real PneumoniaMNIST *train* split (28² reflect-padded to 32²).
   Models are trained **interleaved** in slices of ``--slice-seconds`` and each one's budget is
   its *own* accumulated wall-clock time (set-up included: SpineGAN's classifier S counts
   against SpineGAN's budget). Interleaving spreads any CPU contention from other jobs evenly
   over the models instead of penalising whichever ran during a busy spell.
2. When a model's clock crosses a budget (2, 5, 10 min) its generator (EMA for ours) is
   snapshotted.
3. Each snapshot generates ``--n-synth`` images (balanced classes, fixed seed, ψ = 1),
   cropped back to 28². A fixed CNN recipe (``shared.cnn_train.train_classifier`` with the
   config printed in results.json) is trained on them and scored by ROC AUC on the real
   ``val`` split (never trained on), with a bootstrap CI; optionally also on ``--extra-test``.
4. The same CNN recipe trained on the real train split gives the ceiling.
5. ``--throughput`` measures our trainer's img/s at 32², 64², 128², 256² on random data.

Ablations: ``--variant NAME=MODEL:FIELD=VALUE,...`` adds an arm with GanConfig fields changed
(interleaved with the others, so load hits every arm alike); ``--cnn-seeds N`` scores each
image set by N CNN seeds as well (``val_mean``), since one CNN seed moves the AUC by about
as much as a lever does; ``--device cuda`` trains the GANs on a GPU while the scoring CNNs
stay on the CPU, so every device is judged by the same recipe.

Run (≈ 30 min of training + scoring on 2 cores)::

    python benchmarks/gan_bench.py --out /tmp/gan-bench --throughput

Everything goes to ``OUT/results.json`` (and snapshots to ``OUT/snapshots/``).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from dcgan_reference import DCGANTrainer, as_uint8, params  # noqa: E402

from node.training.config import GanConfig  # noqa: E402
from node.training.data import images_to_model_space, to_output_space  # noqa: E402
from node.training.loop import Trainer  # noqa: E402
from shared.cnn_train import ClassifierConfig, predict_scores, train_classifier  # noqa: E402
from shared.config import from_mapping, parse_assignment  # noqa: E402
from shared.errors import ConfigError  # noqa: E402
from shared.metrics.auc import auc_with_ci  # noqa: E402
from shared.synthetic import from_tensor_range  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "pneumoniamnist" / "pneumoniamnist_trainval.npz"


def load_npz(path: Path, split: str) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    with np.load(path, allow_pickle=False) as d:
        return d[f"{split}_images"].astype(np.uint8), d[f"{split}_labels"].reshape(-1).astype(
            np.int64)


def load_extra(path: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    with np.load(path, allow_pickle=False) as d:
        for split in ("test", "val", "train"):
            if f"{split}_images" in d.files:
                return load_npz(path, split)
    raise SystemExit(f"{path}: no test_images/val_images in MedMNIST layout")


class Model:
    """A named trainer with its own wall clock and snapshots."""

    def __init__(self, name: str, build: Any, budgets: list[float]) -> None:
        self.name = name
        self.budgets = sorted(budgets)
        self.elapsed = 0.0
        t = time.monotonic()
        self.trainer = build()
        self.setup_s = time.monotonic() - t
        self.elapsed += self.setup_s
        self.snapshots: list[dict[str, Any]] = []
        self.steps = 0

    @property
    def done(self) -> bool:
        return len(self.snapshots) == len(self.budgets)

    def nimg(self) -> int:
        return int(self.trainer.nimg)

    def run_for(self, seconds: float) -> None:
        t_end = time.monotonic() + seconds
        while not self.done and time.monotonic() < t_end:
            t = time.monotonic()
            self.trainer.step()
            self.steps += 1
            self.elapsed += time.monotonic() - t
            self._maybe_snapshot()

    def _maybe_snapshot(self) -> None:
        while not self.done and self.elapsed >= self.budgets[len(self.snapshots)] * 60:
            b = self.budgets[len(self.snapshots)]
            train_s = self.elapsed - self.setup_s
            gen = (self.trainer.G_ema if isinstance(self.trainer, Trainer) else self.trainer.G)
            self.snapshots.append({
                "budget_min": b, "kimg": self.nimg() / 1000, "steps": self.steps,
                "elapsed_s": self.elapsed,
                "img_per_s": self.nimg() / train_s if train_s > 0 else None,
                "generator": copy.deepcopy(gen).cpu(),
            })
            print(f"[{self.name}] snapshot at {b} min: {self.nimg() / 1000:.1f} kimg",
                  flush=True)


@torch.no_grad()
def synthesize(model: Model, snap: dict[str, Any], n: int, seed: int
               ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    G = snap["generator"]
    gen = torch.Generator().manual_seed(seed)
    k = 2
    labels = np.repeat(np.arange(k), int(np.ceil(n / k)))[:n]
    out = []
    for i in range(0, n, 500):
        c = torch.from_numpy(labels[i:i + 500])
        if isinstance(model.trainer, Trainer):
            z = torch.randn(len(c), G.z_dim, generator=gen)
            G.eval()
            x = G(z, c).float()
            x = to_output_space(x, model.trainer.transform)
            out.append(from_tensor_range(x.squeeze(1).numpy()))
        else:
            z = torch.randn(len(c), G.z_dim, generator=gen)
            G.train()
            x = G(z, c)[..., 2:-2, 2:-2]
            out.append(as_uint8(x))
    return np.concatenate(out), labels.astype(np.int64)


def score(images: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64], cnn: ClassifierConfig,
          tests: dict[str, tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]],
          cnn_seeds: int = 1) -> dict[str, Any]:
    """One CNN (seed ``cnn.seed``) scored on each test set with a bootstrap CI. With
    ``cnn_seeds`` > 1, further CNNs with the next seeds are trained on the same images and
    ``<test>_seeds`` / ``<test>_mean`` give their AUCs: a single CNN's seed moves the AUC by
    about as much as the levers being compared, and averaging seeds shrinks that part."""
    from dataclasses import replace

    from sklearn.metrics import roc_auc_score

    t = time.monotonic()
    out: dict[str, Any] = {}
    for k in range(cnn_seeds):
        trained = train_classifier(images, labels, 2, replace(cnn, seed=cnn.seed + k),
                                   progress=False, device="cpu")
        for name, (x, y) in tests.items():
            p = predict_scores(trained.model, x)
            if k == 0:
                out[name] = auc_with_ci(y, p[:, 1], n_boot=1000, seed=0).to_dict()
                out["cnn_epochs_run"] = len(trained.history)
            out.setdefault(f"{name}_seeds", []).append(
                out[name]["auc"] if k == 0 else float(roc_auc_score(y, p[:, 1])))
    for name in tests:
        out[f"{name}_mean"] = float(np.mean(out[f"{name}_seeds"]))
    out["cnn_train_s"] = time.monotonic() - t
    return out


def score_selected(images: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64],
                   cnn: ClassifierConfig, members: int, epochs: int,
                   chooser: tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]],
                   tests: dict[str, tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]]
                   ) -> dict[str, Any]:
    """The product's downstream path: the coordinator's candidates (``members`` CNN seeds ×
    ``epochs``, :func:`coordinator.train.train_pooled`), the ensemble chosen on the real
    train split (``chooser``, :func:`node.selection.select_on_train`), scored on ``tests``.
    Applied alike to the synthetic sets and to the real ceiling, so the ratio compares the
    same recipe on both."""
    import tempfile
    from dataclasses import replace

    from coordinator.train import train_pooled
    from node.selection import select_on_train
    from shared.synthetic import SyntheticSet
    from shared.weights_io import load_candidates

    t = time.monotonic()
    pool = SyntheticSet(images, labels, ["normal", "pneumonia"], {})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidates.npz"
        train_pooled(pool, path, replace(cnn, epochs=epochs, patience=0), progress=False,
                     device="cpu", members=members)
        nets, meta = load_candidates(path)
    # as sent: the mode the stored --select cells were measured with
    model, rec = select_on_train(nets, meta["default"], *chooser, batchnorm="sent")
    out: dict[str, Any] = {"cnn_train_s": time.monotonic() - t, "candidates": len(nets),
                           "picked": rec.get("picked")}
    for name, (x, y) in tests.items():
        p = predict_scores(model, x)
        out[name] = auc_with_ci(y, p[:, 1], n_boot=1000, seed=0).to_dict()
    return out


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME=MODEL:K=V,...`` → (NAME, GanConfig overrides); each ``K=V`` read by the project's
    one parser (shared.config.parse_assignment), names and types checked by from_mapping.

    >>> parse_variant("spinegan-ema10=spinegan:ema_kimg=10,augment=fixed")
    ('spinegan-ema10', {'model': 'spinegan', 'ema_kimg': 10, 'augment': 'fixed'})
    """
    name, sep, rest = spec.partition("=")
    model, _, fields = rest.partition(":")
    if not sep or not name or model not in ("gan", "spinegan"):
        raise ValueError("give NAME=MODEL:K=V,... with MODEL gan or spinegan")
    over: dict[str, Any] = {"model": model}
    over.update(parse_assignment(item) for item in filter(None, fields.split(",")))
    return name, over


def throughput(seconds: float, out: dict[str, Any]) -> None:
    rng = np.random.default_rng(0)
    for res, batch in ((32, 64), (64, 64), (128, 32), (256, 16)):
        x = rng.integers(0, 256, (256, res, res), dtype=np.uint8)
        y = np.arange(256) % 2
        tr = Trainer(x, y, ["a", "b"], GanConfig(kimg=1.0, batch=batch), res, None, False)
        tr.step()  # warm-up (allocations, lazy R1 on step 0)
        t = time.monotonic()
        n0 = tr.nimg
        steps = 0
        while time.monotonic() - t < seconds or steps < 2:
            tr.step()
            steps += 1
        rate = (tr.nimg - n0) / (time.monotonic() - t)
        out[str(res)] = {"img_per_s": rate, "s_per_kimg": 1000 / rate, "batch": batch,
                         "steps": steps}
        print(f"throughput {res}²: {rate:.1f} img/s ({1000 / rate:.0f} s/kimg, batch {batch})",
              flush=True)


def speed_ablation(rounds: int, seconds: float, out: dict[str, Any],
                   modes: tuple[str, ...] = ("float32", "channels_last", "bf16")) -> None:
    """img/s of full training steps (D + G + lazy R1 + EMA) per numeric mode, 32², batch 64.

    The modes run interleaved, ``rounds`` times ``seconds`` each, so load changes on a shared
    machine hit every mode alike; each mode's figure is also given as a ratio to float32
    (today's configuration) measured in the same run.
    """
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (512, 32, 32), dtype=np.uint8)
    y = np.arange(512) % 2
    trainers = {m: Trainer(x, y, ["a", "b"], GanConfig(kimg=1.0, batch=64, speed=m),  # type: ignore[arg-type]
                           32, None, False) for m in modes}
    for tr in trainers.values():
        tr.step()  # warm-up
    imgs = dict.fromkeys(modes, 0)
    secs = dict.fromkeys(modes, 0.0)
    for _ in range(rounds):
        for m, tr in trainers.items():
            t, n0 = time.monotonic(), tr.nimg
            while time.monotonic() - t < seconds:
                tr.step()
            secs[m] += time.monotonic() - t
            imgs[m] += tr.nimg - n0
    base = imgs["float32"] / secs["float32"]
    for m in modes:
        rate = imgs[m] / secs[m]
        out[m] = {"img_per_s": rate, "ratio_vs_float32": rate / base, "seconds": secs[m]}
        print(f"speed {m}: {rate:.1f} img/s, ×{rate / base:.2f} vs float32", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("/tmp/gan-bench"))
    ap.add_argument("--models", default="gan,spinegan,dcgan")
    ap.add_argument("--budgets", default="2,5,10", help="minutes, comma-separated")
    ap.add_argument("--slice-seconds", type=float, default=20.0)
    ap.add_argument("--n-synth", type=int, default=10000)
    ap.add_argument("--cnn-epochs", type=int, default=3)
    ap.add_argument("--cnn-width", type=int, default=8)
    ap.add_argument("--cnn-seeds", type=int, default=1,
                    help="CNNs (seeds 0..N-1) per image set; their mean AUC is '<test>_mean'")
    ap.add_argument("--extra-test", type=Path, default=None,
                    help="external real test set (.npz, MedMNIST layout) scored as well")
    ap.add_argument("--throughput", action="store_true", help="also measure img/s 32²–256²")
    ap.add_argument("--throughput-seconds", type=float, default=20.0)
    ap.add_argument("--skip-real", action="store_true", help="skip the CNN-on-real ceiling")
    ap.add_argument("--speed-ablation", type=int, default=0, metavar="ROUNDS",
                    help="only measure img/s per numeric mode (float32 / channels_last / bf16), "
                         "interleaved ROUNDS times, then exit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu",
                    help="where the GANs train (cpu, cuda); the CNN scoring stays on the CPU so "
                         "every device is judged by the same recipe")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=MODEL:K=V,...",
                    help="an extra arm: MODEL (gan or spinegan) with GanConfig fields changed, "
                         "e.g. spinegan-ema10=spinegan:ema_kimg=10; name it in --models")
    ap.add_argument("--select", default="",
                    help="MEMBERSxEPOCHS (e.g. 3x3): also score each snapshot and the real "
                         "ceiling through the product's downstream path (candidates chosen on "
                         "the real train split), key 'selected'")
    args = ap.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.speed_ablation:
        speed: dict[str, Any] = {"cpu": platform.processor() or platform.machine(),
                                 "threads": torch.get_num_threads()}
        speed_ablation(args.speed_ablation, args.throughput_seconds, speed)
        (args.out / "speed.json").write_text(json.dumps(speed, indent=2) + "\n")
        return
    budgets = [float(b) for b in args.budgets.split(",")]
    members, _, per = args.select.partition("x")
    if args.select and not (members.isdigit() and per.isdigit() and int(members) * int(per)):
        ap.error(f"--select {args.select!r}: give MEMBERSxEPOCHS, e.g. 3x3")
    select = (int(members), int(per)) if args.select else None
    x_tr, y_tr = load_npz(args.data, "train")
    x_va, y_va = load_npz(args.data, "val")
    tests = {"val": (x_va, y_va)}
    if args.extra_test:
        tests["extra"] = load_extra(args.extra_test)
    cnn = ClassifierConfig(epochs=args.cnn_epochs, width=args.cnn_width, batch=64, seed=0,
                           patience=args.cnn_epochs)
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "load_avg_start": os.getloadavg()},
        "command": " ".join(sys.argv),
        "data": str(args.data), "n_train": len(y_tr), "n_val": len(y_va),
        "budgets_min": budgets, "n_synth": args.n_synth, "slice_seconds": args.slice_seconds,
        "cnn_config": {k: getattr(cnn, k) for k in cnn.__dataclass_fields__},
        "models": {}, "throughput_cpu": {},
    }
    res_path = args.out / "results.json"

    def save() -> None:
        res_path.write_text(json.dumps(results, indent=2, default=str) + "\n")

    if args.throughput:
        throughput(args.throughput_seconds, results["throughput_cpu"])
        save()

    names = ["normal", "pneumonia"]
    padded = images_to_model_space(x_tr, {"kind": "pad", "store_size": 28, "resolution": 32,
                                          "pad": [2, 2]})
    arms: dict[str, dict[str, Any]] = {"gan": {}, "spinegan": {"model": "spinegan"}}
    configs: dict[str, GanConfig] = {}
    for spec in ["", *args.variant]:
        try:
            if spec:
                arms.update([parse_variant(spec)])
            # The project's one resolver: unknown fields and wrong types are refused by name.
            configs = {n: from_mapping(GanConfig, {"kimg": 1e9, "seed": args.seed,
                                                   "device": args.device, **a})
                       for n, a in arms.items()}
        except (ValueError, ConfigError) as e:
            ap.error(f"--variant {spec!r}: {e}")
    results["variants"] = arms

    def ours(name: str) -> Any:
        cfg = configs[name]
        return lambda: Trainer(x_tr, y_tr, names, cfg, 28, args.out / f"run-{name}", False)

    builders = {name: ours(name) for name in arms}
    builders["dcgan"] = lambda: DCGANTrainer(padded, torch.from_numpy(y_tr), 2, seed=args.seed)
    unknown = [n for n in args.models.split(",") if n not in builders]
    if unknown:
        ap.error(f"--models: unknown {', '.join(unknown)}; known: {', '.join(builders)}")
    for name in args.models.split(","):
        (args.out / f"run-{name}" / "spine-classifier.npz").unlink(missing_ok=True)
    models = [Model(n, builders[n], budgets) for n in args.models.split(",")]
    for m in models:
        g = m.trainer.G
        results["models"][m.name] = {"params_G": params(g), "params_D": params(m.trainer.D),
                                     "setup_s": m.setup_s}
    t0 = time.monotonic()
    while not all(m.done for m in models):
        for m in models:
            m.run_for(args.slice_seconds)
        print(f"  elapsed {time.monotonic() - t0:.0f}s: " + ", ".join(
            f"{m.name} {m.elapsed / 60:.1f} min {m.nimg() / 1000:.1f} kimg" for m in models),
            flush=True)
    results["training_wall_s"] = time.monotonic() - t0
    results["machine"]["load_avg_after_training"] = os.getloadavg()
    for m in models:
        for s in m.snapshots:
            torch.save(s["generator"].state_dict(),
                       args.out / f"snapshot-{m.name}-{s['budget_min']:g}min.pt")
        results["models"][m.name]["snapshots"] = [
            {k: v for k, v in s.items() if k != "generator"} for s in m.snapshots]
    save()

    if not args.skip_real:
        print("scoring CNN on real train split (ceiling)", flush=True)
        results["real_ceiling"] = score(x_tr, y_tr, cnn, tests, args.cnn_seeds)
        if select:
            results["real_ceiling"]["selected"] = score_selected(x_tr, y_tr, cnn, *select,
                                                                 (x_tr, y_tr), tests)
        save()
    for m in models:
        for s_rec, s in zip(results["models"][m.name]["snapshots"], m.snapshots, strict=True):
            imgs, labs = synthesize(m, s, args.n_synth, seed=1234)
            sc = score(imgs, labs, cnn, tests, args.cnn_seeds)
            if select:
                sc["selected"] = score_selected(imgs, labs, cnn, *select, (x_tr, y_tr), tests)
            s_rec.update(sc)
            print(f"[{m.name}] {s['budget_min']:g} min → val AUC {sc['val']['auc']:.4f}"
                  f" (mean of {args.cnn_seeds} CNNs {sc['val_mean']:.4f})"
                  + (f", selected {sc['selected']['val']['auc']:.4f}" if select else ""),
                  flush=True)
            save()
    results["machine"]["load_avg_end"] = os.getloadavg()
    save()
    print(json.dumps({m: [(s["budget_min"], round(s["val"]["auc"], 4)) for s in r["snapshots"]]
                      for m, r in results["models"].items()}, indent=1))


if __name__ == "__main__":
    main()
