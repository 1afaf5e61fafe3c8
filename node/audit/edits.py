"""The edits a copier makes to a training image, to plant disguised copies in a synthetic set.

The audit's tests and ``benchmarks/privacy_audit.py`` plant these among honest images and
check that every one is found; SECURITY.md lists them as what the audit is tested against.
Each edit takes one uint8 image and a seeded generator, so a planted set is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
Edit = Callable[[U8, np.random.Generator], U8]


def _u8(x: npt.NDArray[np.floating]) -> U8:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def shift(img: U8, rng: np.random.Generator) -> U8:
    """Translate by 1–4 px in a random direction; the uncovered border repeats the edge."""
    dy, dx = 0, 0
    while dy == 0 and dx == 0:
        dy, dx = (int(v) for v in rng.integers(-4, 5, 2))
    h, w = img.shape
    padded = np.pad(img, 4, mode="edge")
    return padded[4 - dy: 4 - dy + h, 4 - dx: 4 - dx + w].copy()


def mirror(img: U8, rng: np.random.Generator) -> U8:
    return img[:, ::-1].copy()


def vflip(img: U8, rng: np.random.Generator) -> U8:
    return img[::-1].copy()


def gamma_contrast(img: U8, rng: np.random.Generator) -> U8:
    """Gamma in [0.6, 1.6], then contrast ×[0.7, 1.3] about the mean, clipped (a window)."""
    x = (img / 255.0) ** float(rng.uniform(0.6, 1.6)) * 255.0
    return _u8((x - x.mean()) * float(rng.uniform(0.7, 1.3)) + x.mean())


def noise(img: U8, rng: np.random.Generator) -> U8:
    """Gaussian noise, σ = 6 grey levels."""
    return _u8(img + rng.normal(0.0, 6.0, img.shape))


def crop_rescale(img: U8, rng: np.random.Generator) -> U8:
    """A random crop of 88–95 % of the side, resized back to full size (bilinear)."""
    import torch
    from torch.nn import functional as F

    h, w = img.shape
    frac = float(rng.uniform(0.88, 0.95))
    ch, cw = max(2, round(h * frac)), max(2, round(w * frac))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = torch.from_numpy(img[y0: y0 + ch, x0: x0 + cw].astype(np.float32))[None, None]
    return _u8(F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
               .numpy())


def shift_mirror_contrast(img: U8, rng: np.random.Generator) -> U8:
    return gamma_contrast(mirror(shift(img, rng), rng), rng)


def crop_vflip_gamma(img: U8, rng: np.random.Generator) -> U8:
    return gamma_contrast(vflip(crop_rescale(img, rng), rng), rng)


EDITS: dict[str, Edit] = {
    "exact": lambda img, rng: img.copy(),
    "shift 1-4 px": shift,
    "mirror": mirror,
    "vertical flip": vflip,
    "gamma/contrast": gamma_contrast,
    "noise σ=6": noise,
    "crop 88-95 % + rescale": crop_rescale,
    "shift + mirror + contrast": shift_mirror_contrast,
    "crop + vertical flip + gamma": crop_vflip_gamma,
}
"""Every edit the audit is tested against, by name (one registry: tests, benchmark, docs)."""


def plant(honest: U8, train: U8, edit: Edit, fraction: float, seed: int
          ) -> tuple[U8, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Replace ``fraction`` of ``honest`` by edited training images.

    Returns the planted set, where the copies are, and which training image each copies.
    """
    rng = np.random.default_rng(seed)
    k = max(1, round(fraction * len(honest)))
    where = rng.choice(len(honest), k, replace=False)
    source = rng.choice(len(train), k, replace=False)
    out = honest.copy()
    for w, s in zip(where, source, strict=True):
        out[w] = edit(train[s], rng)
    return out, where, source
