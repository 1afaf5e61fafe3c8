"""Network presets: the one table of GAN capacity per resolution and device.

This module owns the table and imports nothing from the trainer; ``GanConfig`` (which checks a
preset name against it) and :func:`node.training.config.preset_config` (a config from a preset)
import it, one way only.

Why presets: the lean nets benchmarked on 2 CPU cores (16 channels from 32² up, ~0.7 M
parameters whatever the image size) are right for a site without a GPU and far too small for
a 256² radiograph on a hospital GPU, where StyleGAN2 uses 128–512 channels. A site admin
picks one name (``node train --preset gpu-256``) instead of tuning eight numbers; any field a
config file or option sets explicitly still wins over the preset (one resolver:
:func:`shared.config.resolve`, with the preset as its defaults layer).

Channels at side ``r`` are ``clamp(channel_base // r, channel_min, channel_max)``
(:func:`node.training.networks.layers.channels_at`):

=========  ====  =====  ====  ====  =====  ===== ==== =====  ===== ==========================
preset     res   base   max   min   z / w  batch R1 γ aug    EMA   channels 4² … res²
=========  ====  =====  ====  ====  =====  ===== ==== =====  ===== ==========================
cpu        any   512    256   16    64/128 64    heur ada    2.5   128 64 32 16 16 … (lean)
gpu-64     64    8192   512   128   256/256 64   heur ada    10    512 512 512 256 128
gpu-128    128   16384  512   64    512/512 64   heur ada    10    512×4 256 128
gpu-256    256   16384  512   32    512/512 32   1.0  ada    10    512×4 256 128 64
gpu-512    512   16384  512   32    512/512 16   2.0  ada    10    512×4 256 128 64 32
=========  ====  =====  ====  ====  =====  ===== ==== =====  ===== ==========================

"heur" is StyleGAN2-ADA's γ = 0.0002·R²/batch; at 256² and 512² the fixed γ follows the
StyleGAN2-ADA paper configurations (paper256: 1, paper512: 0.5, doubled here for the
smaller batch). EMA half-life is in kimg, ramped up over the first images (``ema_rampup``)
so short runs are not stuck on the initial weights. The GPU presets pin their resolution (a
512² store trains at 512² with ``gpu-512``); ``cpu`` follows the store size.

>>> PRESETS["gpu-256"]["channel_min"], preset_defaults("gpu-256")["resolution"]
(32, 256)
>>> preset_defaults("gpu-1024")
Traceback (most recent call last):
...
shared.errors.ConfigError: unknown preset 'gpu-1024' (known: cpu, gpu-64, gpu-128, gpu-256, gpu-512)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.errors import ConfigError

DEFAULT_PRESET = "cpu"

PRESETS: dict[str, dict[str, Any]] = {
    # The benchmarked lean CPU nets: exactly GanConfig's own defaults (results unchanged).
    "cpu": {},
    "gpu-64": {
        "resolution": 64, "channel_base": 8192, "channel_max": 512, "channel_min": 128,
        "z_dim": 256, "w_dim": 256, "batch": 64, "ema_kimg": 10.0,
    },
    "gpu-128": {
        "resolution": 128, "channel_base": 16384, "channel_max": 512, "channel_min": 64,
        "z_dim": 512, "w_dim": 512, "batch": 64, "ema_kimg": 10.0,
    },
    "gpu-256": {
        "resolution": 256, "channel_base": 16384, "channel_max": 512, "channel_min": 32,
        "z_dim": 512, "w_dim": 512, "batch": 32, "r1_gamma": 1.0, "ema_kimg": 10.0,
    },
    "gpu-512": {
        "resolution": 512, "channel_base": 16384, "channel_max": 512, "channel_min": 32,
        "z_dim": 512, "w_dim": 512, "batch": 16, "r1_gamma": 2.0, "ema_kimg": 10.0,
    },
}
"""Preset name → the GanConfig fields it sets (everything else keeps GanConfig's default)."""


def preset_defaults(name: str) -> dict[str, Any]:
    """The GanConfig values a preset stands for, ``preset`` itself included."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return {"preset": name, **PRESETS[name]}


def with_preset(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (config-file keys, a federation request's gan-config) over its preset's
    values: the one place a preset name turns into numbers."""
    name = data.get("preset", DEFAULT_PRESET)
    return {**preset_defaults(str(name)), **data}
