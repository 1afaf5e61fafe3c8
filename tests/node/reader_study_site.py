"""A small phantom site with a trained tiny generator and a synthetic set, for the reader-study
tests (built once per test module, copied per test)."""

from __future__ import annotations

import shutil
from pathlib import Path

from node.training import GanConfig

TINY = GanConfig(resolution=32, batch=16, kimg=0.032, checkpoint_kimg=1.0, channel_base=128,
                 channel_min=4, z_dim=8, w_dim=16, min_class_images=8, device="cpu",
                 grid_per_class=2)


def build_site(root: Path) -> Path:
    """40 phantom images at 32² (8 in the test split), a trained run and a 24-image set."""
    from node.generate import generate
    from node.phantoms import phantom_store
    from node.training import train

    site = phantom_store(root / "site", 40, 32)
    train(site, TINY, progress=False)
    generate(site, 24, seed=1)
    return site


def copy_site(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest
