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
    describe_transform,
    fit_transform,
    images_to_model_space,
    load_site_data,
    tensor_to_uint8,
    to_output_space,
)
from node.training.hardware import (
    Distributed,
    adam,
    check_memory,
    enable_fast_math,
    pick_device,
)
from node.training.losses import GanLoss, r1_gamma_heuristic
from node.training.networks import Discriminator, Generator, build_discriminator, build_generator
from node.training.networks.d_heads import spine_feature_channels, spine_features
from node.training.speed import MODES as SPEED_MODES
from node.training.speed import SpeedChoice, probe_speed, to_channels_last
from shared.config import to_dict, write_resolved
from shared.files import atomic_write_bytes
from shared.synthetic import to_tensor_range

log = logging.getLogger(__name__)


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
        self.dist = Distributed()
        self.device = pick_device(cfg.device)
        self.dist.start(self.device)
        enable_fast_math(self.device)
        if cfg.dp and self.dist.active:
            raise TrainingError("DP training runs on one process; start it without torchrun")
        # Each process draws its share of the batch; the step's images shown are the total.
        self.local_batch = self.dist.local_batch(cfg.effective().batch)
        self.memory = check_memory(cfg, self.num_classes, len(labels), self.device,
                                   self.dist.world)

        # Data: uint8 in model space, on the device; converted to float per batch.
        x = images_to_model_space(images, self.transform)
        self.data_u8 = torch.from_numpy(tensor_to_uint8(x)).unsqueeze(1).to(self.device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.class_counts = np.bincount(np.asarray(labels), minlength=self.num_classes).tolist()
        self.data_gen = torch.Generator(device="cpu").manual_seed(
            cfg.seed + 12345 + 7919 * self.dist.rank)

        torch.manual_seed(cfg.seed)
        e = self.eff
        self.G = Generator(res, self.num_classes, z_dim=e.z_dim, w_dim=e.w_dim,
                           mapping_layers=e.mapping_layers, channel_base=e.channel_base,
                           channel_max=e.channel_max, channel_min=e.channel_min).to(self.device)
        self.D: nn.Module = Discriminator(
            res, self.num_classes, channel_base=e.channel_base, channel_max=e.channel_max,
            channel_min=e.channel_min, norm=e.d_norm, mbstd=e.mbstd, recon=e.d_recon,
            projected=spine_feature_channels(e.spine_width) if e.d_projected else ()
        ).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self._seed_process_rng()
        betas = (e.beta1, e.beta2)
        r1_gamma = e.r1_gamma if e.r1_gamma is not None else r1_gamma_heuristic(res, e.batch)
        self.r1_gamma = 0.0 if e.dp else r1_gamma
        # Lazy regularisation: adjust Adam for the R1 steps (StyleGAN2 appendix B).
        ratio = e.r1_interval / (e.r1_interval + 1) if self.r1_gamma > 0 else 1.0
        self.opt_G = adam(self.G.parameters(), self.device, lr=e.lr_g, betas=betas)
        self.opt_D: torch.optim.Optimizer = adam(
            self.D.parameters(), self.device, lr=e.lr_d * ratio,
            betas=(e.beta1**ratio, e.beta2**ratio))
        self.augment = Augment(mode=e.augment, p=e.initial_p(), target=e.ada_target,
                               ada_kimg=e.ada_kimg)
        self.spine: nn.Module | None = None
        uses_spine = e.model == "spinegan" and (e.spine_gamma > 0 or e.d_projected)
        self.dp_budgets = self._plan_dp_budgets(uses_spine)
        self.spine_dp: dict[str, Any] | None = None
        if uses_spine:
            if run_dir is None:
                raise TrainingError("SpineGAN needs a run folder to keep its classifier in")
            from node.training.spine_classifier import ensure_spine_classifier, spine_dp_report

            if not self.dist.main:
                self.dist.barrier()  # rank 0 trains S once; the others then load it
            s = ensure_spine_classifier(
                run_dir, tensor_to_uint8(x), np.asarray(labels, dtype=np.int64),
                self.num_classes, resolution=res, epochs=e.spine_epochs, width=e.spine_width,
                seed=e.seed, max_minutes=e.spine_max_minutes, min_steps=e.spine_min_steps,
                dp_budget=self.dp_budgets.get("spine_classifier"), progress=progress)
            if self.dist.main:
                self.dist.barrier()
            self.spine = s.to(self.device).eval().requires_grad_(False)
            if e.d_projected and getattr(self.spine, "width", None) != e.spine_width:
                raise TrainingError(
                    f"{run_dir}: the saved classifier S has width "
                    f"{getattr(self.spine, 'width', None)}, d_projected's heads were sized for "
                    f"spine_width {e.spine_width}; delete the S file or use a new --run-name")
            if e.dp:
                self.spine_dp = spine_dp_report(run_dir)
        self.loss = GanLoss(self.G, self.D, self.augment, r1_gamma=self.r1_gamma,
                            r1_interval=e.r1_interval, spine=self.spine,
                            spine_gamma=e.spine_gamma,
                            recon_weight=e.d_recon_weight if e.d_recon else 0.0,
                            projected=self._spine_features if e.d_projected else None,
                            projected_weight=e.d_projected_weight,
                            diversity_weight=e.g_diversity)
        self.speed = self._choose_speed()
        self.amp_dtype = self.speed.amp_dtype
        if self.speed.channels_last:
            to_channels_last(self.G, self.D, self.G_ema)
        self.step_count = 0
        self.nimg = 0
        self.dp_session: Any = None
        self._dp_iter: Iterator[Any] | None = None
        self._D_raw: nn.Module = self.D
        self.last_stats: dict[str, float] = {}
        self.init_from: dict[str, Any] | None = None
        """What this run started from (``--init-from``), recorded in checkpoints and metrics."""
        self._stat_sums: dict[str, torch.Tensor] = {}
        self._stat_counts: dict[str, int] = {}

    def _spine_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        assert self.spine is not None
        return spine_features(self.spine, x)

    def _choose_speed(self) -> SpeedChoice:
        """float32, bf16 autocast or channels_last: as configured, or probed on this machine.

        CUDA keeps bf16 autocast where supported (no probe needed); DP runs stay float32
        (Opacus' per-example gradients and clipping are not validated in bf16).
        """
        mode = self.eff.speed
        if self.eff.dp:
            return SpeedChoice("float32", failed={"bf16": "DP runs stay float32"})
        if mode == "auto" and self.device.type == "cuda":
            bf16 = self.eff.amp and torch.cuda.is_bf16_supported()
            return SpeedChoice("bf16" if bf16 else "float32")
        if mode == "auto":
            with torch.random.fork_rng(devices=[]):
                choice = probe_speed(self.G, self.D, self.eff.batch)
            log.info("speed probe: %s", choice.to_dict())
            return choice
        return SpeedChoice(mode)

    def _seed_process_rng(self) -> None:
        """Under torchrun, each process its own noise stream (same nets, different z): a
        single process keeps the stream seeded with ``cfg.seed``, so its results are as before."""
        if self.dist.active:
            step = getattr(self, "step_count", 0)
            torch.manual_seed(self.cfg.seed + 104729 * (self.dist.rank + 1) + step)

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
            idx = torch.randint(len(self.labels), (self.local_batch,), generator=self.data_gen)
            idx = idx.to(self.device, non_blocking=True)  # a blocking copy would sync a GPU
            xb, yb = self.data_u8[idx], self.labels[idx]
        return to_tensor_range(xb), yb

    def _fake_labels(self, n: int) -> torch.Tensor:
        """Fake classes follow the real class ratio, as in conditional StyleGAN2-ADA."""
        idx = torch.randint(len(self.labels), (n,), generator=self.data_gen)
        idx = idx.to(self.device, non_blocking=True)
        return self.labels[idx]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def step(self) -> dict[str, torch.Tensor]:
        """One D-step and one G-step; returns detached 0-d stat tensors (nothing read back).

        The step makes no host synchronisation: stats stay on the device, ADA's p is updated
        on the device, and the real/fake counts come from shapes. :meth:`read_stats` turns the
        accumulated sums into floats at logging intervals.
        """
        e = self.eff
        real, c_real = self._real_batch()
        n_real = real.shape[0]
        # Always a full batch of fakes, whatever the (Poisson-sampled) real count: under DP the
        # joint real+fake step then changes by one clipped gradient when one real image is
        # added or removed (sensitivity C). Tying the fake count to the real count would let a
        # neighbouring data set add a fake example too, doubling the sensitivity.
        n_fake = self.local_batch
        z = torch.randn(n_fake, e.z_dim, device=self.device)
        c_fake = self._fake_labels(n_fake)
        stats: dict[str, torch.Tensor] = {}

        # D step.
        self.D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        with self._autocast():
            loss_d, st, real_logits = self.loss.discriminator_loss(
                real, c_real, z, c_fake, joint=self.dp_session is not None)
        loss_d.float().backward()
        self.dist.average_gradients(self.D)
        self.opt_D.step()
        stats.update(st)
        if n_real:
            self.augment.observe_real_logits(real_logits)
        if self.r1_gamma > 0 and self.step_count % e.r1_interval == 0:
            self.opt_D.zero_grad(set_to_none=True)
            r1, r1_raw = self.loss.r1_penalty(real, c_real)
            r1.backward()
            self.dist.average_gradients(self.D)
            self.opt_D.step()
            stats["r1"] = r1_raw

        # G step: D frozen (and, under DP, its per-example hooks idle).
        self.D.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        z2 = torch.randn(self.local_batch, e.z_dim, device=self.device)
        c2 = self._fake_labels(self.local_batch)
        d_for_g = self._D_raw if self.dp_session is not None else None
        with self._autocast():
            loss_g, st = self.loss.generator_loss(z2, c2, D=d_for_g)
        loss_g.float().backward()
        self.dist.average_gradients(self.G)
        self.opt_G.step()
        self.D.requires_grad_(True)
        if self.dp_session is not None:
            self.opt_D.zero_grad(set_to_none=True)
        stats.update(st)

        self.nimg += n_real if self.dp_session is not None else e.batch
        self.step_count += 1
        if self.dist.active:
            # Keep what each process tracks from its own share identical everywhere.
            self.dist.average_(self.G.w_avg)  # type: ignore[arg-type]
            self.augment.average_p_(self.dist.average_)
        self._update_ema()
        for k, v in stats.items():
            self._stat_sums[k] = self._stat_sums[k] + v if k in self._stat_sums else v
            self._stat_counts[k] = self._stat_counts.get(k, 0) + 1
        return stats

    def read_stats(self) -> dict[str, float]:
        """Means of the stats since the last call, as floats (the one host read per interval)."""
        out = {k: float(v) / self._stat_counts[k] for k, v in self._stat_sums.items()}
        out["aug_p"] = self.augment.p
        self._stat_sums, self._stat_counts = {}, {}
        self.last_stats = out
        return out

    @torch.no_grad()
    def _update_ema(self) -> None:
        e = self.eff
        ema_nimg = e.ema_kimg * 1000.0
        if e.ema_rampup is not None:
            ema_nimg = min(ema_nimg, self.nimg * e.ema_rampup)
        beta = 0.5 ** (e.batch / max(ema_nimg, 1e-8))
        ema: list[torch.Tensor] = list(self.G_ema.parameters())
        live = [p.detach() for p in self.G.parameters()]
        torch._foreach_lerp_(ema, live, 1.0 - beta)  # ema += (1 − β)(p − ema), one fused op
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
            "speed_mode": self.speed.mode,
            "init_from": self.init_from,
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
        self._seed_process_rng()
        self.init_from = ckpt.get("init_from")

    @torch.no_grad()
    def sample_grid(self, per_class: int) -> npt.NDArray[np.uint8]:
        """Rows = classes, columns = fixed latent vectors (same every checkpoint), EMA G."""
        gen = torch.Generator().manual_seed(self.cfg.seed + 999)
        z = torch.randn(per_class, self.G_ema.z_dim, generator=gen)
        rows: list[npt.NDArray[np.uint8] | None] = []
        for k in range(self.num_classes):
            if self.class_counts[k] == 0:  # a vocabulary class this site lacks: a blank row
                rows.append(None)
                continue
            c = torch.full((per_class,), k, dtype=torch.long)
            x = self.G_ema(z.to(self.device), c.to(self.device)).float().cpu()
            x = to_output_space(x, self.transform)
            imgs = tensor_to_uint8(x)
            rows.append(np.concatenate(list(imgs), axis=1))
        shape = next(r.shape for r in rows if r is not None)
        return np.concatenate([r if r is not None else np.zeros(shape, np.uint8)
                               for r in rows], axis=0)


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
          progress: bool = True, init_from: Path | None = None) -> Path:
    """Train (or resume) ``SITE/runs/<run_name>`` on the site's real train split.

    ``init_from``: a checkpoint or a synthetic set to start a NEW run from
    (:mod:`node.training.init_from`).
    """
    site_dir = Path(site_dir)
    images, labels, names, store_size = load_site_data(site_dir, cfg.classes)
    if cfg.dp and cfg.dp_site_budget is not None and cfg.kimg is not None:
        from node.training.dp import check_site_budget, dp_delta_default

        steps = max(1, math.ceil(cfg.kimg * 1000 / cfg.batch))
        check_site_budget(site_dir / "runs", run_name, float(cfg.dp_epsilon),  # type: ignore[arg-type]
                          cfg.dp_site_budget, min(1.0, cfg.batch / len(labels)), steps,
                          cfg.dp_delta or dp_delta_default(len(labels)))
    run_dir = site_dir / "runs" / run_name
    summary_path = run_dir / "metrics.json"
    # Only a summary this call wrote is a spend (not one left by an earlier call of the run).
    before = summary_path.stat().st_mtime_ns if summary_path.exists() else None
    try:
        return train_arrays(images, labels, names, cfg, run_dir, store_size=store_size,
                            progress=progress, where=site_dir, init_from=init_from)
    finally:
        # Every DP run's spend goes into the site's privacy ledger, interrupted runs too
        # (their metrics.json is written before the interrupt propagates).
        if cfg.dp and summary_path.exists() and summary_path.stat().st_mtime_ns != before:
            from node.privacy_ledger import record_dp_report

            record_dp_report(site_dir, json.loads(summary_path.read_text()).get("dp"),
                             run_name)


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
    init_from: Path | None = None,
) -> Path:
    """The loop behind :func:`train`, on arrays (the benchmark calls it directly)."""
    if cfg.kimg is None and cfg.max_minutes is None:
        raise TrainingError("give a training budget: --kimg N or --max-minutes M")
    if cfg.dp and cfg.kimg is None:
        raise TrainingError("DP training needs --kimg, to plan the privacy budget over a known "
                            "number of steps")
    pick_device(cfg.device)  # a missing GPU is the first thing to say, before any data check
    store_size = store_size or int(images.shape[-1])
    warnings = check_class_counts(labels, class_names, cfg, where or run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME
    ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    init = _check_init_from(init_from, ckpt, ckpt_path, cfg, class_names, store_size)
    run_dir.mkdir(parents=True, exist_ok=True)
    if ckpt is not None and cfg.resolution is None:
        cfg = replace(cfg, resolution=ckpt["config"]["resolution"])
    if ckpt is not None and cfg.speed == "auto" and ckpt.get("speed_mode") in SPEED_MODES:
        # A resumed run keeps the numeric mode it was probed into: same arithmetic throughout.
        cfg = replace(cfg, speed=ckpt["speed_mode"])
    # A run started from a synthetic set pretrains inside it (_start_from → train_arrays): the
    # group belongs to the outer call, whose fine-tune still needs it.
    outer = torch.distributed.is_available() and torch.distributed.is_initialized()
    trainer = Trainer(images, labels, class_names, cfg, store_size, run_dir, progress)
    try:
        return _run(trainer, ckpt, ckpt_path, init, run_dir, store_size, progress, warnings)
    finally:
        # Gloo's and NCCL's threads must not outlive the interpreter: a torchrun process that
        # exits with its process group alive can abort at exit ("terminate called without an
        # active exception", SIGABRT) after training has succeeded.
        if not outer:
            trainer.dist.stop()


def _run(trainer: Trainer, ckpt: dict[str, Any] | None, ckpt_path: Path, init: Any,
         run_dir: Path, store_size: int, progress: bool, warnings: list[str]) -> Path:
    """Resume or start, train until the budget ends, write the summary: the body of
    :func:`train_arrays` once its trainer exists."""
    class_names = trainer.class_names
    cfg = trainer.cfg
    dist = trainer.dist
    progress = progress and dist.main
    if ckpt is not None:
        if cfg.dp and int(ckpt["step"]) > 0:
            trainer.load_state(ckpt, ckpt_path)  # other settings: refused, naming them
            if _finished_dp_run(run_dir, ckpt, cfg):
                return run_dir  # asked again (a restarted coordinator): it is done
            raise CheckpointError(
                f"{ckpt_path}: resuming a DP run would restart its privacy accounting; start a "
                "new --run-name (or delete this run) instead"
            )
        trainer.load_state(ckpt, ckpt_path)
    elif init is not None:
        _start_from(trainer, init, cfg, run_dir, store_size, progress)
    # What actually trains: DP's forced settings (fixed augmentation, group norm, no mbstd)
    # included, so the file next to the outputs never claims settings the run did not use.
    if dist.main:
        write_resolved(trainer.eff, run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    batch = trainer.eff.batch
    if cfg.dp:
        total_steps = max(1, math.ceil(float(cfg.kimg) * 1000 / batch))  # type: ignore[arg-type]
        trainer.enable_dp(total_steps)
    if dist.main:
        _append_jsonl(metrics_path, {"event": "start", "step": trainer.step_count,
                                     "kimg": trainer.nimg / 1000, "device": str(trainer.device),
                                     "processes": dist.world, "preset": cfg.preset,
                                     "resize": describe_transform(trainer.transform),
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
        if dist.main:
            save_checkpoint(ckpt_path, trainer.state())
            write_grid(run_dir / f"samples-step{trainer.step_count:07d}.png",
                       trainer.sample_grid(cfg.grid_per_class))
        dist.barrier()

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
            elif trainer.dp_session is not None and trainer.dp_session.exhausted():
                stopped = "dp_budget"
            elif guard.requested:
                stopped = "interrupted"
            else:
                stopped = ""
            if dist.active:
                # Every process stops on the same step, whichever one's clock ran out first.
                reasons = ("", "max_minutes", "interrupted")
                flag = torch.tensor([reasons.index(stopped) if stopped in reasons else 1],
                                    device=trainer.device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                stopped = reasons[int(flag[0])]
            if stopped:
                break
            trainer.step()
            _after_step(trainer.step_count)
            if trainer.step_count % cfg.log_every == 0:
                # The only host read of the training stats: once per logging interval.
                stats = trainer.read_stats()
            if trainer.step_count % cfg.log_every == 0 and dist.main:
                rec = {"step": trainer.step_count, "kimg": trainer.nimg / 1000,
                       "img_per_s": rate(), "elapsed_s": time.monotonic() - t0, **stats}
                if trainer.augment.last_rt is not None:
                    rec["ada_rt"] = trainer.augment.last_rt
                _append_jsonl(metrics_path, rec)
                if bar is not None and task is not None:
                    bar.update(task, status=(
                        f"kimg {trainer.nimg / 1000:.1f}  G {stats.get('g_adv', 0):.2f}  "
                        f"D {stats.get('d_loss', 0):.2f}  p {stats['aug_p']:.2f}"))
            if bar is not None and task is not None:
                if total is None and math.isfinite(deadline):
                    left = max(0.0, deadline - time.monotonic())
                    bar.update(task, total=trainer.nimg + rate() * left)
                bar.update(task, completed=trainer.nimg)
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
        "processes": dist.world,
        "preset": cfg.preset,
        "amp": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else None,
        "resize": describe_transform(trainer.transform),
        "threads": torch.get_num_threads(),
        "stopped": stopped,
        "warnings": warnings,
        "aug_p": trainer.augment.p,
        "speed": trainer.speed.to_dict(),
        "init_from": trainer.init_from,
        "dp": trainer.dp_report(),
    }
    if dist.main:
        atomic_write_bytes(run_dir / "metrics.json",
                           (json.dumps(summary, indent=2, default=str) + "\n").encode())
        _append_jsonl(metrics_path, {"event": "stop", "reason": stopped,
                                     "step": trainer.step_count, "kimg": trainer.nimg / 1000})
    dist.barrier()  # every rank returns once the summary exists (`node train` prints it)
    if stopped == "interrupted":
        raise KeyboardInterrupt
    return run_dir


def _finished_dp_run(run_dir: Path, ckpt: dict[str, Any], cfg: GanConfig) -> bool:
    """Whether ``run_dir``'s DP run ended (planned steps or time cap, not an interrupt) at its
    last checkpoint, with the kimg asked now: then there is nothing to resume, and its ε is
    already in the site's privacy ledger."""
    try:
        summary = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(summary, dict) and summary.get("stopped") in ("dp_budget", "max_minutes")
            and summary.get("steps") == int(ckpt["step"])
            and (ckpt.get("config") or {}).get("kimg") == cfg.kimg)


def _check_init_from(init_from: Path | None, ckpt: dict[str, Any] | None, ckpt_path: Path,
                     cfg: GanConfig, class_names: list[str], store_size: int) -> Any:
    """The checked ``--init-from`` source, or None; raises before anything is written.

    Re-running the command that started a run from ``init_from`` resumes it (same source);
    naming another source for an existing run is refused, so its checkpoint is never mixed.
    """
    if init_from is None:
        return None
    from node.training.init_from import InitFromError, load_init_source

    if ckpt is not None:
        started = (ckpt.get("init_from") or {}).get("path")
        if started is not None and Path(started) in (Path(init_from),
                                                     Path(init_from) / CHECKPOINT_NAME):
            return None  # resume of the run that started from it
        raise InitFromError(
            f"{ckpt_path.parent}: already holds a run; --init-from starts a new run, so choose "
            "a new --run-name (this run and its checkpoint are left as they are)")
    resolved = cfg if cfg.resolution is not None else replace(
        cfg, resolution=auto_resolution(store_size))
    return load_init_source(Path(init_from), resolved, class_names, store_size)


def _start_from(trainer: Trainer, init: Any, cfg: GanConfig, run_dir: Path, store_size: int,
                progress: bool) -> None:
    """Load the checked source's weights into a fresh trainer (pretraining first for a set)."""
    from node.training.init_from import apply_checkpoint, pretrain_config

    source = init.checkpoint
    path = init.path
    if init.synthetic is not None:
        syn = init.synthetic
        pre_dir = train_arrays(syn.images, syn.labels, list(syn.class_names),
                               pretrain_config(cfg), run_dir / "pretrain", store_size=store_size,
                               progress=progress, where=init.path)
        path = pre_dir / CHECKPOINT_NAME
        source = load_checkpoint(path)
    apply_checkpoint(trainer, source, path)
    trainer.init_from = init.describe()


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
