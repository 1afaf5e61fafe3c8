"""Alpha blending of a lesion patch into an image, with a distance-based mask (Gupta et al.).

Why a distance-based mask: pasting a square patch leaves a visible seam that a classifier
learns instead of the lesion. Gupta et al. blend with an alpha that is 1 near the patch centre
and falls off with distance, so the patch's own background fades into the host image. Here
the distance is elliptical and normalised to the patch (0 at the centre, 1 at the middle of
each edge): alpha is 1 up to ``core`` and falls linearly to 0 at 1, and is 0 beyond (the
patch's corners never touch the host). A pixel outside the mask's support is never changed.

Distances are taken at pixel centres, so the middle pixel of an edge (centre at 0.8) still
gets some alpha, while the corners get none:

>>> a = distance_alpha(5, 5)
>>> float(a[2, 2]), float(a[0, 0]), round(float(a[0, 2]), 2)
(1.0, 0.0, 0.4)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

DEFAULT_CORE = 0.5
"""Alpha is 1 within half the patch radius, then falls linearly to 0 at its edge."""


def distance_alpha(height: int, width: int, core: float = DEFAULT_CORE) -> npt.NDArray[np.float32]:
    """(height, width) alpha in [0, 1]: 1 for normalised distance ≤ ``core``, 0 at ≥ 1."""
    if height < 1 or width < 1:
        raise ValueError(f"mask needs a positive size, got {height}×{width}")
    if not 0.0 <= core < 1.0:
        raise ValueError(f"core must be in [0, 1), got {core}")
    yy = (np.arange(height, dtype=np.float32) + 0.5) / height * 2.0 - 1.0
    xx = (np.arange(width, dtype=np.float32) + 0.5) / width * 2.0 - 1.0
    d = np.sqrt(yy[:, None] ** 2 + xx[None, :] ** 2)
    alpha = np.clip((1.0 - d) / (1.0 - core), 0.0, 1.0)
    return alpha.astype(np.float32)


def blend_patch(
    image: npt.NDArray[np.uint8],
    patch: npt.NDArray[np.floating] | npt.NDArray[np.uint8],
    top: int,
    left: int,
    core: float = DEFAULT_CORE,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """``image`` with ``patch`` (same pixel scale, 0–255) blended in at (top, left).

    The patch may reach past the image border; the part outside is dropped. Returns the new
    image and the alpha mask in image coordinates (0 wherever the image is unchanged).
    """
    if image.ndim != 2 or patch.ndim != 2:
        raise ValueError(f"need 2-D image and patch, got {image.shape} and {patch.shape}")
    h, w = image.shape
    ph, pw = patch.shape
    alpha_patch = distance_alpha(ph, pw, core)
    mask = np.zeros((h, w), np.float32)
    y0, y1 = max(top, 0), min(top + ph, h)
    x0, x1 = max(left, 0), min(left + pw, w)
    out = image.copy()
    if y0 >= y1 or x0 >= x1:
        return out, mask
    a = alpha_patch[y0 - top: y1 - top, x0 - left: x1 - left]
    p = np.asarray(patch, np.float32)[y0 - top: y1 - top, x0 - left: x1 - left]
    region = image[y0:y1, x0:x1].astype(np.float32)
    mixed = a * p + (1.0 - a) * region
    # Only where alpha > 0: rounding must not nudge a pixel the mask leaves alone.
    out[y0:y1, x0:x1] = np.where(a > 0, np.clip(np.rint(mixed), 0, 255), region).astype(np.uint8)
    mask[y0:y1, x0:x1] = a
    return out, mask
