"""`GanConfig`: every knob of `synthlearn node train`, frozen and fully recorded per run.

Defaults are the benchmarked CPU settings (benchmarks/results-gan.md). Fields split into two
groups: *structural* ones (network shape, class set, seed, DP setting) that a resumed run must
share with its checkpoint, and *schedule* ones (``kimg``, ``max_minutes``, checkpoint interval,
logging) that may change between invocations, so "train 10 more minutes" is just re-running
the command with a larger budget.

>>> GanConfig(kimg=1.0).model
'gan'
>>> GanConfig(kimg=1.0, resolution=48)
Traceback (most recent call last):
...
ValueError: resolution must be a power of two between 8 and 1024, got 48; ...
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from node.training.networks.generator import check_resolution
from node.training.presets import PRESETS, with_preset
from shared.errors import ConfigError

STRUCTURAL = (
    "preset", "model", "resolution", "classes", "seed", "z_dim", "w_dim", "mapping_layers",
    "channel_base", "channel_max", "channel_min", "d_norm", "mbstd", "dp_epsilon", "dp_delta",
    "dp_max_grad_norm", "spine_width", "d_recon", "d_projected",
)
"""Fields a checkpoint must agree on to be resumed (see :func:`config_differences`)."""

HARD_MIN_CLASS_IMAGES = 50
"""Default refusal threshold per class. Below ~50 images a GAN can only memorise (and the audit
would flag copies); see :data:`WARN_CLASS_IMAGES` for the softer warning."""

WARN_CLASS_IMAGES = 500
"""GIST (the GAN-based synthetic-data study cited in DESIGN.md) saw visible artefacts when a
class had fewer than ~500 training images; we warn below it and still train."""


@dataclass(frozen=True)
class GanConfig:
    preset: str = "cpu"
    """Network preset (node/training/presets.py): the defaults layer below the config file and
    options. ``cpu`` is the lean benchmarked nets; ``gpu-64`` … ``gpu-512`` give GPU capacity."""
    model: Literal["gan", "spinegan"] = "gan"
    resolution: int | None = None
    """Power of two; None → the smallest power of two ≥ the store size (28 → 32), clamped to
    [32, 512]. Smaller stores are reflect-padded when the gap is ≤ 1/4 of the side (28 → 32:
    2 px each side, cropped off again in `node generate`), else resized; the resize is recorded
    in the run (checkpoint, metrics.json) and the bundle (generation info)."""
    kimg: float | None = None
    """Stop after this many thousand real images shown to D (cumulative over resumes)."""
    max_minutes: float | None = None
    """Stop after this many minutes of training in this invocation."""
    classes: Literal["binary", "lesion"] = "binary"
    batch: int = 64
    seed: int = 0
    augment: Literal["ada", "fixed", "none"] = "ada"
    aug_p: float | None = None
    """Initial p for ADA (default 0) or the constant p in fixed mode (default 0.5)."""
    ada_target: float = 0.6
    ada_kimg: float = 50.0
    checkpoint_kimg: float = 10.0
    spine_gamma: float = 0.1
    spine_epochs: int = 3
    spine_width: int = 8
    spine_min_steps: int = 200
    """S trains for at least this many steps whatever the data size (``spine_epochs`` alone gave
    the demo's small site 21 steps and an S at chance, so SpineGAN's S loss carried no signal
    there). Not applied under DP, where more steps would cost more noise for the same ε."""
    spine_max_minutes: float | None = None
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    dp_max_grad_norm: float = 1.0
    dp_site_budget: float | None = None
    """The site's total ε over all its DP runs (e.g. both rounds). A run whose ε would exceed
    what earlier runs left is refused before training (``dp.check_site_budget``)."""
    lr_g: float = 0.002
    lr_d: float = 0.002
    beta1: float = 0.0
    beta2: float = 0.99
    r1_gamma: float | None = None
    """None → StyleGAN2-ADA's heuristic 0.0002·R²/batch."""
    r1_interval: int = 16
    ema_kimg: float = 2.5
    ema_rampup: float | None = 0.05
    z_dim: int = 64
    w_dim: int = 128
    mapping_layers: int = 2
    channel_base: int = 512
    channel_max: int = 256
    channel_min: int = 16
    d_norm: Literal["none", "group"] = "none"
    mbstd: bool = True
    min_class_images: int = HARD_MIN_CLASS_IMAGES
    warn_class_images: int = WARN_CLASS_IMAGES
    init_pretrain_kimg: float = 8.0
    """kimg of pretraining on a synthetic set given to ``--init-from`` (no real image read)."""
    log_every: int = 25
    """Steps between metrics.jsonl lines and progress-bar refreshes of the losses."""
    grid_per_class: int = 8
    device: str | None = None
    """None → CUDA (with bf16 autocast) when available, else CPU with all cores."""
    amp: bool = True
    """bf16 autocast on a CUDA device that supports it (never on CPU)."""
    d_recon: bool = True
    """FastGAN's self-supervised D: a decoder on D's 8×8 features reconstructs each real input
    and D's loss adds the error (:mod:`node.training.networks.d_heads`). On by default since
    its ablation (benchmarks/d_levers.py, 12 kimg, the demo's stores): the CNN trained on the
    synthetic images gained +0.15 / +0.20 / +0.18 AUC (DeLong CI lower ends +0.05 to +0.08) at
    two sites and two seeds, for ×1.08-1.12 time per kimg: BENCHMARKS.md, issue 12."""
    d_recon_weight: float = 1.0
    d_projected: bool = False
    """Projected GAN on SpineGAN's frozen classifier S: extra patch discriminators on S's
    intermediate features of real and generated images. SpineGAN only; refused under DP.
    Off: its ablation lost 0.04 AUC (CI −0.14 to +0.06) for ×1.49 time per kimg."""
    d_projected_weight: float = 1.0
    g_diversity: float = 0.0
    """Weight of the mode-seeking term (Mao et al., "Mode Seeking GANs", CVPR 2019): for pairs
    of G's batch with the same class, G is penalised by 1 / (mean |G(z1) − G(z2)| / mean
    |z1 − z2|), so two latents of one class may not give one image. Aimed at the demo's
    generators that drew one image per class (recall 0.06-0.24, BENCHMARKS.md § demo). 0 = off
    until benchmarks/d_levers.py measures it."""
    speed: Literal["auto", "float32", "bf16", "channels_last"] = "auto"
    """Numeric mode of the adversarial passes. ``auto``: bf16 on CUDA; on CPU a start-up probe
    (:mod:`node.training.speed`) times float32, bf16 autocast and channels_last on this
    machine and keeps the fastest if it wins by ≥ 10 %. R1 and DP steps always run float32."""

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.resolution is not None:
            check_resolution(self.resolution)
        for name in ("kimg", "max_minutes", "checkpoint_kimg", "ada_kimg", "ema_kimg",
                     "init_pretrain_kimg"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        if self.batch < 2:
            raise ValueError(f"batch must be ≥ 2, got {self.batch}")
        if self.aug_p is not None and not 0.0 <= self.aug_p <= 1.0:
            raise ValueError(f"aug_p must be in [0, 1], got {self.aug_p}")
        if self.dp_site_budget is not None and self.dp_site_budget <= 0:
            raise ValueError(f"dp_site_budget must be > 0, got {self.dp_site_budget}")
        if self.dp_epsilon is not None and self.dp_epsilon <= 0:
            raise ValueError(f"dp_epsilon must be > 0, got {self.dp_epsilon}")
        if self.dp_delta is not None and not 0.0 < self.dp_delta < 1.0:
            raise ValueError(f"dp_delta must be in (0, 1), got {self.dp_delta}")
        if self.seed < 0:
            raise ValueError(f"seed must be ≥ 0, got {self.seed}")
        if self.d_projected and self.model != "spinegan":
            raise ValueError("d_projected needs model 'spinegan': its heads read SpineGAN's "
                             "classifier S, which plain 'gan' runs do not train")
        if self.d_projected and self.dp_epsilon is not None:
            raise ValueError(
                "d_projected is not available with DP (dp_epsilon): the projected heads would "
                "read S's features of private images outside the D-step's per-example clipping; "
                "drop d_projected (d_recon works under DP)")
        for name in ("d_recon_weight", "d_projected_weight", "g_diversity", "spine_min_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.min_class_images < 1:
            raise ValueError("min_class_images must be ≥ 1")

    @property
    def dp(self) -> bool:
        return self.dp_epsilon is not None

    def effective(self) -> GanConfig:
        """The settings DP forces (fixed augmentation, GroupNorm D, no minibatch-std)."""
        if not self.dp:
            return self
        return dataclasses.replace(self, augment="fixed", d_norm="group", mbstd=False)

    def initial_p(self) -> float:
        if self.augment == "none":
            return 0.0
        if self.aug_p is not None:
            return self.aug_p
        return 0.0 if self.augment == "ada" else 0.5


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable list of structural fields that differ between two resolved configs."""
    defaults = {f.name: f.default for f in dataclasses.fields(GanConfig)}
    out = []
    for key in STRUCTURAL:
        # A key the checkpoint predates had its default then (``preset`` before presets: cpu).
        was, now = old.get(key, defaults[key]), new.get(key, defaults[key])
        if was != now:
            out.append(f"{key}: checkpoint has {was!r}, now {now!r}")
    return out


def preset_config(name: str, **overrides: Any) -> GanConfig:
    """A :class:`GanConfig` from a preset plus explicit overrides (benchmarks, tests)."""
    fields = {f.name for f in dataclasses.fields(GanConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"GanConfig: unknown key {unknown[0]!r}")
    return GanConfig(**with_preset({"preset": name, **overrides}))
