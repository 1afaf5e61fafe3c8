"""Fixtures shared by all tests: tiny, fast, deterministic data."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

# Nothing in the test-suite may phone home (DESIGN §7).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (benchmarks are scripts, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there while it executes
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def blob_images(n: int, size: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Two easily separable classes: 'No finding' (smooth noise) vs 'Lesion' (bright disc)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((n, size, size), np.uint8)
    lesions: list[str] = []
    for i in range(n):
        img = 60 + 20 * rng.standard_normal((size, size))
        if i % 2:
            cx, cy = rng.uniform(size * 0.3, size * 0.7, 2)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < (size * 0.15) ** 2] += 120
            lesions.append("Lesion")
        else:
            lesions.append("No finding")
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return images, lesions


@pytest.fixture
def tiny_site(tmp_path: Path) -> Path:
    """A 32² site store with 64 images of two classes, written through the real writer.

    The split is forced (16 test images, 8 per class): the salted patient hash would draw a
    new split size on every run.
    """
    from node.store import Accepted, StoreWriter

    images, lesions = blob_images(64, 32, seed=0)
    site = tmp_path / "site"
    with StoreWriter(site, size=32, test_fraction=0.25) as w:
        w.add_batch(
            [
                Accepted(f"img-{i:03d}", images[i], lesions[i], f"src-{i}", patient_id=f"P{i}",
                         split="test" if (i // 2) % 4 == 3 else "train")
                for i in range(len(images))
            ]
        )
    return site
