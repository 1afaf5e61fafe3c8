"""Where an inserted lesion goes: near where the site's real lesions of that class lie.

Why the real boxes: a lesion has an anatomical place (a collapsed body is on the spine, not in
the soft tissue beside it), and the site's own boxes of the class are the only map of those
places we have that needs no anatomy model. Each placement takes one real train-split box of
the class, in coordinates normalised to the image side (so a 256² store's boxes place lesions
in a 32² or 64² synthetic image alike), moves its centre by a normal jitter of ``jitter`` ×
the box's size and scales it by a log-normal factor (σ = ``scale_jitter``), and keeps the
centre inside the image. The jitter keeps the inserted set from repeating the real boxes
exactly; it is small because the synthetic normal images come from a generator trained on the
same site, so their anatomy lies where the real one does.

>>> import numpy as np
>>> boxes = np.array([[0.4, 0.5, 0.6, 0.6]])
>>> p = draw_placements(boxes, 3, np.random.default_rng(0))
>>> p.shape, bool((p[:, 2] > p[:, 0]).all())
((3, 4), True)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from node.insertion.patches import usable_box
from node.store import SiteStore

JITTER = 0.15
SCALE_JITTER = 0.1


def class_boxes(store: SiteStore, lesion: str) -> npt.NDArray[np.float64]:
    """(n, 4) usable train-split boxes of ``lesion``, as fractions of the image side."""
    out = []
    for s in store.samples("train"):
        if s.lesion == lesion:
            box = usable_box(s.bbox, store.size)
            if box is not None:
                out.append([v / store.size for v in box])
    return np.asarray(out, np.float64).reshape(-1, 4)


def draw_placements(boxes: npt.NDArray[np.float64], n: int, rng: np.random.Generator,
                    jitter: float = JITTER, scale_jitter: float = SCALE_JITTER
                    ) -> npt.NDArray[np.float64]:
    """(n, 4) jittered boxes (x0, y0, x1, y1) as fractions of the side, centres in (0, 1)."""
    if len(boxes) == 0:
        raise ValueError("need at least one real box to place lesions")
    pick = boxes[rng.integers(0, len(boxes), n)]
    w = pick[:, 2] - pick[:, 0]
    h = pick[:, 3] - pick[:, 1]
    cx = (pick[:, 0] + pick[:, 2]) / 2 + rng.normal(0, jitter, n) * w
    cy = (pick[:, 1] + pick[:, 3]) / 2 + rng.normal(0, jitter, n) * h
    cx, cy = np.clip(cx, 0.02, 0.98), np.clip(cy, 0.02, 0.98)
    s = np.exp(rng.normal(0, scale_jitter, n))
    w, h = w * s, h * s
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
