"""The GAN training loop: `synthlearn node train` and the benchmark both drive :class:`Trainer`.

One step = one D-step (non-saturating logistic, plus lazy R1 every ``r1_interval`` steps) and one
G-step (plus the SpineGAN term), then the EMA generator update. Everything random is drawn
from streams saved in the checkpoint (global torch RNG for noise and augmentation, a dedicated
generator for picking real images and fake labels), so a killed run that is resumed from its
last checkpoint continues exactly as if it had never stopped.

Under DP (``cfg.dp_epsilon``), D, its optimizer and the real-data loader are handed to
:class:`node.training.dp.DPSession`; the D-step becomes one forward/backward over
``cat([real, fake.detach()])``, R1 and ADA are off, D uses GroupNorm, and training stops when
the planned steps are done (never on images shown, which Poisson sampling makes data-dependent).
Every D-step sees a full batch of fakes whatever the real count, so one real image changes the
step by one clipped gradient. G's step runs D with its parameters frozen, so Opacus'
per-example hooks record nothing for it. SpineGAN's S gets its own share of ε
(:func:`node.training.dp.split_budget`) and the run reports the composed total.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from node.errors import CheckpointError, TrainingError
from node.training.augment import Augment
from node.training.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from node.training.config import GanConfig, config_differences
from node.training.data import (
    auto_resolution,
    check_class_counts,
    fit_transform,
    images_to_model_space,
    load_site_data,
    tensor_to_uint8,
    to_output_space,
)
from node.training.losses import GanLoss, r1_gamma_heuristic
from node.training.networks import Discriminator, Generator, build_discriminator, build_generator
from shared.config import to_dict, write_resolved
from shared.files import atomic_write_bytes
from shared.synthetic import to_tensor_range

log = logging.getLogger(__name__)


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present (or asked for), else CPU with every core.

    Unless ``OMP_NUM_THREADS`` is set: then whoever started this process (a loopback
    federation running several sites on one machine, a SLURM job) has shared the cores out,
    and taking all of them would make the sites' OpenMP threads spin against each other.
    """
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(os.cpu_count() or 1)
    return torch.device("cpu")


def _after_step(step: int) -> None:
    """Test hook: a test may replace this to simulate a kill at a given step."""


class Trainer:
    """All state of one GAN run; :meth:`step` advances it by one batch."""

    def __init__(
        self,
        images: npt.NDArray[np.uint8],
        labels: npt.NDArray[np.int64],
        class_names: list[str],
        cfg: GanConfig,
        store_size: int,
        run_dir: Path | None = None,
        progress: bool = True,
    ) -> None:
        if cfg.resolution is None:
            cfg = replace(cfg, resolution=auto_resolution(store_size))
        self.cfg = cfg
        self.eff = cfg.effective()
        self.run_dir = run_dir
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        res = int(cfg.resolution)  # type: ignore[arg-type]
        self.resolution = res
        self.transform = fit_transform(store_size, res)
        self.device = pick_device(cfg.device)
        self.amp_dtype: torch.dtype | None = None
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            self.amp_dtype = torch.bfloat16

        # Data: uint8 in model space, on the device; converted to float per batch.
        x = images_to_model_space(images, self.transform)
        self.data_u8 = torch.from_numpy(tensor_to_uint8(x)).unsqueeze(1).to(self.device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.class_counts = np.bincount(np.asarray(labels), minlength=self.num_classes).tolist()
        self.data_gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 12345)

        torch.manual_seed(cfg.seed)
        e = self.eff
        self.G = Generator(res, self.num_classes, z_dim=e.z_dim, w_dim=e.w_dim,
                           mapping_layers=e.mapping_layers, channel_base=e.channel_base,
                           channel_max=e.channel_max, channel_min=e.channel_min).to(self.device)
        self.D: nn.Module = Discriminator(
            res, self.num_classes, channel_base=e.channel_base, channel_max=e.channel_max,
            channel_min=e.channel_min, norm=e.d_norm, mbstd=e.mbstd).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        betas = (e.beta1, e.beta2)
        r1_gamma = e.r1_gamma if e.r1_gamma is not None else r1_gamma_heuristic(res, e.batch)
        self.r1_gamma = 0.0 if e.dp else r1_gamma
        # Lazy regularisation: adjust Adam for the R1 steps (StyleGAN2 appendix B).
        ratio = e.r1_interval / (e.r1_interval + 1) if self.r1_gamma > 0 else 1.0
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=e.lr_g, betas=betas)
        self.opt_D: torch.optim.Optimizer = torch.optim.Adam(
            self.D.parameters(), lr=e.lr_d * ratio, betas=(e.beta1**ratio, e.beta2**ratio))
        self.augment = Augment(mode=e.augment, p=e.initial_p(), target=e.ada_target,
                               ada_kimg=e.ada_kimg)
        self.spine: nn.Module | None = None
        uses_spine = e.model == "spinegan" and e.spine_gamma > 0
        self.dp_budgets = self._plan_dp_budgets(uses_spine)
        self.spine_dp: dict[str, Any] | None = None
        if uses_spine:
            if run_dir is None:
                raise TrainingError("SpineGAN needs a run folder to keep its classifier in")
            from node.training.spine_classifier import ensure_spine_classifier, spine_dp_report

            s = ensure_spine_classifier(
                run_dir, tensor_to_uint8(x), np.asarray(labels, dtype=np.int64),
                self.num_classes, resolution=res, epochs=e.spine_epochs, width=e.spine_width,
                seed=e.seed, max_minutes=e.spine_max_minutes,
                dp_budget=self.dp_budgets.get("spine_classifier"), progress=progress)
            self.spine = s.to(self.device).eval().requires_grad_(False)
            if e.dp:
                self.spine_dp = spine_dp_report(run_dir)
        self.loss = GanLoss(self.G, self.D, self.augment, r1_gamma=self.r1_gamma,
                            r1_interval=e.r1_interval, spine=self.spine,
                            spine_gamma=e.spine_gamma)
        self.step_count = 0
        self.nimg = 0
        self.dp_session: Any = None
        self._dp_iter: Iterator[Any] | None = None
        self._D_raw: nn.Module = self.D
        self.last_stats: dict[str, float] = {}

    # -- DP ------------------------------------------------------------------------------
    def _plan_dp_budgets(self, uses_spine: bool) -> dict[str, tuple[float, float]]:
        """(ε, δ) per network that reads real pixels: D alone, or D and S (sequential
        composition, :func:`node.training.dp.split_budget`). Empty when the run is not private."""
        e = self.eff
        if not e.dp:
            return {}
        from node.training.dp import split_budget

        delta = e.dp_delta if e.dp_delta is not None else 1.0 / len(self.labels)
        epsilon = float(e.dp_epsilon)  # type: ignore[arg-type]
        if uses_spine:
            return split_budget(epsilon, delta)
        return {"discriminator": (epsilon, delta)}

    def dp_report(self) -> dict[str, Any] | None:
        """The run's DP accounting: D's, or D's and S's composed."""
        if self.dp_session is None:
            return None
        from node.training.dp import compose_reports

        return compose_reports({"discriminator": self.dp_session.report(),
                                "spine_classifier": self.spine_dp})

    def enable_dp(self, total_steps: int) -> None:
        """Hand D, its optimizer and the real data to :class:`node.training.dp.DPSession`."""
        from node.training.dp import DPSession

        e = self.eff
        dataset = torch.utils.data.TensorDataset(self.data_u8.cpu(), self.labels.cpu())
        loader = torch.utils.data.DataLoader(dataset, batch_size=e.batch, shuffle=True)
        epsilon, delta = self.dp_budgets["discriminator"]
        session = DPSession(self.D, self.opt_D, loader, target_epsilon=epsilon,
                            delta=delta, total_steps=total_steps,
                            max_grad_norm=e.dp_max_grad_norm)
        self.dp_session = session
        self.D = session.module
        self._D_raw = getattr(session.module, "_module", session.module)
        self.opt_D = session.optimizer
        self.loss.D = self.D

    def _dp_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.dp_session is not None
        while True:
            if self._dp_iter is None:
                self._dp_iter = iter(self.dp_session.data_loader)
            try:
                xb, yb = next(self._dp_iter)
                return xb.to(self.device), yb.to(self.device)
            except StopIteration:
                self._dp_iter = None

    # -- one step ------------------------------------------------------------------------
    def _real_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dp_session is not None:
            xb, yb = self._dp_batch()
        else:
            idx = torch.randint(len(self.labels), (self.eff.batch,), generator=self.data_gen)
            idx = idx.to(self.device)
            xb, yb = self.data_u8[idx], self.labels[idx]
        return to_tensor_range(xb), yb

    def _fake_labels(self, n: int) -> torch.Tensor:
        """Fake classes follow the real class ratio, as in conditional StyleGAN2-ADA."""
        idx = torch.randint(len(self.labels), (n,), generator=self.data_gen).to(self.device)
        return self.labels[idx]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def step(self) -> dict[str, float]:
        e = self.eff
        real, c_real = self._real_batch()
        n_real = real.shape[0]
        # Always a full batch of fakes, whatever the (Poisson-sampled) real count: under DP the
        # joint real+fake step then changes by one clipped gradient when one real image is
        # added or removed (sensitivity C). Tying the fake count to the real count would let a
        # neighbouring data set add a fake example too, doubling the sensitivity.
        n_fake = e.batch
        z = torch.randn(n_fake, e.z_dim, device=self.device)
        c_fake = self._fake_labels(n_fake)
        stats: dict[str, float] = {}

        # D step.
        self.D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        with self._autocast():
            loss_d, st, real_logits = self.loss.discriminator_loss(
                real, c_real, z, c_fake, joint=self.dp_session is not None)
        loss_d.float().backward()
        self.opt_D.step()
        stats.update(st)
        if n_real:
            self.augment.observe_real_logits(real_logits)
        if self.r1_gamma > 0 and self.step_count % e.r1_interval == 0:
            self.opt_D.zero_grad(set_to_none=True)
            r1, r1_raw = self.loss.r1_penalty(real, c_real)
            r1.backward()
            self.opt_D.step()
            stats["r1"] = r1_raw

        # G step: D frozen (and, under DP, its per-example hooks idle).
        self.D.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        z2 = torch.randn(e.batch, e.z_dim, device=self.device)
        c2 = self._fake_labels(e.batch)
        d_for_g = self._D_raw if self.dp_session is not None else None
        with self._autocast():
            loss_g, st = self.loss.generator_loss(z2, c2, D=d_for_g)
        loss_g.float().backward()
        self.opt_G.step()
        self.D.requires_grad_(True)
        if self.dp_session is not None:
            self.opt_D.zero_grad(set_to_none=True)
        stats.update(st)

        self.nimg += n_real if self.dp_session is not None else e.batch
        self.step_count += 1
        self._update_ema()
        stats["aug_p"] = self.augment.p
        self.last_stats = stats
        return stats

    @torch.no_grad()
    def _update_ema(self) -> None:
        e = self.eff
        ema_nimg = e.ema_kimg * 1000.0
        if e.ema_rampup is not None:
            ema_nimg = min(ema_nimg, self.nimg * e.ema_rampup)
        beta = 0.5 ** (e.batch / max(ema_nimg, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            b_ema.copy_(b)

    # -- checkpoints ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "config": to_dict(self.cfg),
            "class_names": self.class_names,
            "class_counts": self.class_counts,
            "transform": self.transform,
            "step": self.step_count,
            "nimg": self.nimg,
            "G": self.G.state_dict(),
            "D": self._D_raw.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "G_arch": self.G.architecture(),
            "D_arch": self._D_raw.architecture(),  # type: ignore[operator]
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "augment": self.augment.state_dict(),
            "rng": rng_state(self.data_gen),
            "dp": self.dp_report(),
        }

    def load_state(self, ckpt: dict[str, Any], path: Path) -> None:
        diffs = config_differences(ckpt["config"], to_dict(self.cfg))
        if ckpt["class_names"] != self.class_names:
            diffs.append(f"class_names: checkpoint has {ckpt['class_names']}, store now has "
                         f"{self.class_names}")
        if diffs:
            raise CheckpointError(
                f"{path}: this run was trained with a different configuration; refusing to "
                f"resume ({'; '.join(diffs)}). Use the original settings or a new --run-name"
            )
        try:
            self.G.load_state_dict(ckpt["G"])
            self._D_raw.load_state_dict(ckpt["D"])
            self.G_ema.load_state_dict(ckpt["G_ema"])
            self.opt_G.load_state_dict(ckpt["opt_G"])
            self.opt_D.load_state_dict(ckpt["opt_D"])
            self.augment.load_state_dict(ckpt["augment"])
            restore_rng(ckpt["rng"], self.data_gen)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(
                f"{path}: checkpoint does not fit this run ({str(exc).splitlines()[0][:200]}); "
                "delete the run folder to start over"
            ) from None
        self.step_count = int(ckpt["step"])
        self.nimg = int(ckpt["nimg"])

    @torch.no_grad()
    def sample_grid(self, per_class: int) -> npt.NDArray[np.uint8]:
        """Rows = classes, columns = fixed latent vectors (same every checkpoint), EMA G."""
        gen = torch.Generator().manual_seed(self.cfg.seed + 999)
        z = torch.randn(per_class, self.G_ema.z_dim, generator=gen)
        rows = []
        for k in range(self.num_classes):
            c = torch.full((per_class,), k, dtype=torch.long)
            x = self.G_ema(z.to(self.device), c.to(self.device)).float().cpu()
            x = to_output_space(x, self.transform)
            imgs = tensor_to_uint8(x)
            rows.append(np.concatenate(list(imgs), axis=1))
        return np.concatenate(rows, axis=0)


def write_grid(path: Path, grid: npt.NDArray[np.uint8], min_tile: int = 64) -> None:
    import io

    from PIL import Image

    img = Image.fromarray(grid, mode="L")
    tile = grid.shape[0]
    scale = 1
    while tile * scale < min_tile * 2 and grid.shape[0] * scale < 512:
        scale *= 2
    if scale > 1:
        img = img.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


class _SigintGuard:
    """First Ctrl-C: finish the current step, checkpoint, stop. Second: stop immediately."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None
        self._active = threading.current_thread() is threading.main_thread()

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _SigintGuard:
        if self._active:
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._active:
            signal.signal(signal.SIGINT, self._old)


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")


def train(site_dir: Path, cfg: GanConfig, run_name: str = "default",
          progress: bool = True) -> Path:
    """Train (or resume) ``SITE/runs/<run_name>`` on the site's real train split."""
    site_dir = Path(site_dir)
    images, labels, names, store_size = load_site_data(site_dir, cfg.classes)
    return train_arrays(images, labels, names, cfg, site_dir / "runs" / run_name,
                        store_size=store_size, progress=progress, where=site_dir)


def train_arrays(
    images: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.int64],
    class_names: list[str],
    cfg: GanConfig,
    run_dir: Path,
    *,
    store_size: int | None = None,
    progress: bool = True,
    where: Path | str | None = None,
) -> Path:
    """The loop behind :func:`train`, on arrays (the benchmark calls it directly)."""
    if cfg.kimg is None and cfg.max_minutes is None:
        raise TrainingError("give a training budget: --kimg N or --max-minutes M")
    if cfg.dp and cfg.kimg is None:
        raise TrainingError("DP training needs --kimg, to plan the privacy budget over a known "
                            "number of steps")
    store_size = store_size or int(images.shape[-1])
    warnings = check_class_counts(labels, class_names, cfg, where or run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT_NAME
    ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if ckpt is not None and cfg.resolution is None:
        cfg = replace(cfg, resolution=ckpt["config"]["resolution"])
    trainer = Trainer(images, labels, class_names, cfg, store_size, run_dir, progress)
    cfg = trainer.cfg
    if ckpt is not None:
        if cfg.dp and int(ckpt["step"]) > 0:
            raise CheckpointError(
                f"{ckpt_path}: resuming a DP run would restart its privacy accounting; start a "
                "new --run-name (or delete this run) instead"
            )
        trainer.load_state(ckpt, ckpt_path)
    # What actually trains: DP's forced settings (fixed augmentation, group norm, no mbstd)
    # included, so the file next to the outputs never claims settings the run did not use.
    write_resolved(trainer.eff, run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    batch = trainer.eff.batch
    if cfg.dp:
        total_steps = max(1, math.ceil(float(cfg.kimg) * 1000 / batch))  # type: ignore[arg-type]
        trainer.enable_dp(total_steps)
    _append_jsonl(metrics_path, {"event": "start", "step": trainer.step_count,
                                 "kimg": trainer.nimg / 1000, "device": str(trainer.device),
                                 "time": time.time()})

    # Under DP the run stops on its planned number of steps (DPSession.exhausted), never on
    # the images shown: with Poisson sampling that count depends on the data and is not noised.
    target_nimg = cfg.kimg * 1000 if cfg.kimg is not None and not cfg.dp else math.inf
    deadline = time.monotonic() + cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    ckpt_every = cfg.checkpoint_kimg * 1000
    next_ckpt = (math.floor(trainer.nimg / ckpt_every) + 1) * ckpt_every
    start_nimg, t0 = trainer.nimg, time.monotonic()
    stopped = "kimg"

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, trainer.state())
        write_grid(run_dir / f"samples-step{trainer.step_count:07d}.png",
                   trainer.sample_grid(cfg.grid_per_class))

    def rate() -> float:
        dt = time.monotonic() - t0
        return (trainer.nimg - start_nimg) / dt if dt > 0 else 0.0

    from shared.progress import optional_progress

    with optional_progress(progress, "img") as bar, _SigintGuard() as guard:
        total = cfg.kimg * 1000 if cfg.kimg is not None else None
        task = bar.add_task(f"train {cfg.model}", total=total, completed=trainer.nimg,
                            status="") if bar is not None else None
        while True:
            if trainer.nimg >= target_nimg:
                stopped = "kimg"
                break
            if time.monotonic() >= deadline:
                stopped = "max_minutes"
                break
            if trainer.dp_session is not None and trainer.dp_session.exhausted():
                stopped = "dp_budget"
                break
            if guard.requested:
                stopped = "interrupted"
                break
            stats = trainer.step()
            _after_step(trainer.step_count)
            if trainer.step_count % cfg.log_every == 0:
                rec = {"step": trainer.step_count, "kimg": trainer.nimg / 1000,
                       "img_per_s": rate(), "elapsed_s": time.monotonic() - t0, **stats}
                if trainer.augment.last_rt is not None:
                    rec["ada_rt"] = trainer.augment.last_rt
                _append_jsonl(metrics_path, rec)
            if bar is not None and task is not None:
                if total is None and math.isfinite(deadline):
                    left = max(0.0, deadline - time.monotonic())
                    bar.update(task, total=trainer.nimg + rate() * left)
                status = (f"kimg {trainer.nimg / 1000:.1f}  G {stats.get('g_adv', 0):.2f}  "
                          f"D {stats.get('d_loss', 0):.2f}  p {trainer.augment.p:.2f}")
                bar.update(task, completed=trainer.nimg, status=status)
            if trainer.nimg >= next_ckpt:
                checkpoint()
                next_ckpt = (math.floor(trainer.nimg / ckpt_every) + 1) * ckpt_every
        checkpoint()

    wall = time.monotonic() - t0
    summary: dict[str, Any] = {
        "kind": "gan_training",
        "model": cfg.model,
        "resolution": trainer.resolution,
        "classes": cfg.classes,
        "class_names": class_names,
        "class_counts": trainer.class_counts,
        "kimg": trainer.nimg / 1000,
        "steps": trainer.step_count,
        "img_per_s": rate(),
        "s_per_kimg": (wall / ((trainer.nimg - start_nimg) / 1000)
                       if trainer.nimg > start_nimg else None),
        "wall_s": wall,
        "device": str(trainer.device),
        "threads": torch.get_num_threads(),
        "stopped": stopped,
        "warnings": warnings,
        "aug_p": trainer.augment.p,
        "dp": trainer.dp_report(),
    }
    atomic_write_bytes(run_dir / "metrics.json",
                       (json.dumps(summary, indent=2, default=str) + "\n").encode())
    _append_jsonl(metrics_path, {"event": "stop", "reason": stopped, "step": trainer.step_count,
                                 "kimg": trainer.nimg / 1000})
    if stopped == "interrupted":
        raise KeyboardInterrupt
    return run_dir


def load_trained(run_dir: Path, device: str = "cpu") -> tuple[Generator, dict[str, Any]]:
    """(EMA generator in eval mode, checkpoint metadata without weights) of a run."""
    path = Path(run_dir) / CHECKPOINT_NAME
    ckpt = load_checkpoint(path)
    try:
        G = build_generator(ckpt["G_arch"])
        G.load_state_dict(ckpt["G_ema"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the generator ({exc})") from None
    keys = ("config", "class_names", "class_counts", "transform", "step", "nimg", "dp")
    meta: dict[str, Any] = {k: ckpt[k] for k in keys if k in ckpt}
    return G.to(device).eval().requires_grad_(False), meta


__all__ = ["Trainer", "build_discriminator", "load_trained", "pick_device", "train",
           "train_arrays"]
