"""The lesion patch generator: a conditional GAN over crops around the stored lesion boxes.

Why patches (Gupta et al., seed 003): a rare lesion class has too few whole images for a
whole-image GAN, but the lesion itself is small and looks alike from image to image. A GAN
over square crops centred on the stored boxes (side = ``margin`` × the box's longer side,
resized to ``patch_size``², conditioned on the lesion class) learns the lesion from a few
dozen examples; :mod:`node.insertion.insert` then blends its patches into normal images.

It is the project's own GAN (:func:`node.training.loop.train_arrays`: same networks, loss,
ADA augmentation, checkpoints and resume) run on crops, in its own folder
``SITE/patch-runs/<name>/`` so no whole-image command mistakes it for a whole-image run.
``patches.json`` there records what a later insertion must agree with: patch size, margin and
class list. Classes with fewer than ``min_class_images`` usable boxes are left out (listed
in ``patches.json``); a box of zero area, or one not overlapping its image, is not usable.

Privacy: the crops are real pixels, so the patch generator is trained on real data exactly
like a whole-image GAN; the sets made with it are audited and exported like any other.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from node.errors import InsertionError
from node.store import NORMAL, Sample, SiteStore
from node.training.config import GanConfig
from shared.files import atomic_write_bytes

PATCH_DEFAULTS: dict[str, Any] = {
    "patch_size": 16,
    "margin": 1.5,
    "min_class_images": 10,
    "batch": 32,
    "kimg": 4.0,
}
"""The one table of patch-generator defaults. 16² patches: at a 32² store a lesion box is
8–20 px, so a 1.5× crop is 12–30 px and 16² keeps its detail; 10 boxes per class at least
(whole-image runs refuse under 50: a 16² patch has far less to learn than an image)."""

MARKER = "patches.json"
PATCH_RUNS = "patch-runs"


def patch_run_dir(site_dir: Path, run_name: str) -> Path:
    return Path(site_dir) / PATCH_RUNS / run_name


def usable_box(box: tuple[float, float, float, float] | None, size: int
               ) -> tuple[float, float, float, float] | None:
    """The box clipped to the image, or None when it has no area there (or is not finite)."""
    if box is None or not all(math.isfinite(v) for v in box):
        return None
    x0, y0, x1, y1 = (min(max(float(v), 0.0), float(size)) for v in box)
    if x1 - x0 < 1.0 or y1 - y0 < 1.0:
        return None
    return (x0, y0, x1, y1)


def crop_square(box: tuple[float, float, float, float], margin: float
                ) -> tuple[float, float, float]:
    """(centre x, centre y, side) of the square crop around ``box`` (any pixel unit)."""
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2, (y0 + y1) / 2, margin * max(x1 - x0, y1 - y0)


def resize(img: npt.NDArray[Any], side: int,
           box: tuple[float, float, float, float] | None = None) -> npt.NDArray[np.float32]:
    """``img`` (or the ``box`` region of it) resized to side², bilinear (antialiased when
    shrinking), as float32 on the input's 0–255 scale."""
    from PIL import Image

    pil = Image.fromarray(np.asarray(img, np.float32), mode="F")
    out = pil.resize((side, side), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, np.float32)


def lesion_crop(sample: Sample, size: int, patch_size: int, margin: float
                ) -> npt.NDArray[np.uint8] | None:
    """The ``patch_size``² crop around a sample's box, edge-padded where it leaves the image."""
    box = usable_box(sample.bbox, size)
    if box is None:
        return None
    cx, cy, side = crop_square(box, margin)
    pad = math.ceil(side) + 1
    padded = np.pad(sample.array, pad, mode="edge")
    region = (cx - side / 2 + pad, cy - side / 2 + pad, cx + side / 2 + pad, cy + side / 2 + pad)
    out = resize(padded, patch_size, region)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass
class Crops:
    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    class_names: list[str]
    left_out: dict[str, int]
    """Lesion classes with some usable boxes, but fewer than the minimum."""


def boxed_counts(store: SiteStore) -> dict[str, int]:
    """Usable lesion boxes per class in the train split (No finding has none)."""
    counts: dict[str, int] = {}
    for s in store.samples("train"):
        if s.lesion != NORMAL and usable_box(s.bbox, store.size) is not None:
            counts[s.lesion] = counts.get(s.lesion, 0) + 1
    return dict(sorted(counts.items()))


def patch_classes(counts: dict[str, int], min_class_images: int) -> list[str]:
    """The classes a patch generator is trained on: enough usable boxes, sorted by name."""
    return sorted(c for c, k in counts.items() if k >= min_class_images)


def lesion_crops(site_dir: Path, patch_size: int, margin: float,
                 min_class_images: int) -> Crops:
    """Crops of every usable train-split box of the classes with enough of them."""
    store = SiteStore.open(site_dir)
    counts = boxed_counts(store)
    names = patch_classes(counts, min_class_images)
    if not names:
        have = ", ".join(f"{c!r}: {k}" for c, k in counts.items()) or "none"
        raise InsertionError(
            f"{site_dir}: no lesion class has {min_class_images} usable boxes in the train split "
            f"(usable boxes per class: {have}); the label sheet needs xmin,ymin,xmax,ymax "
            "columns for lesion rows, or lower --min-boxes")
    index = {c: i for i, c in enumerate(names)}
    images, labels = [], []
    for s in store.samples("train"):
        if s.lesion in index:
            crop = lesion_crop(s, store.size, patch_size, margin)
            if crop is not None:
                images.append(crop)
                labels.append(index[s.lesion])
    assert len(images) == sum(counts[c] for c in names)
    return Crops(np.stack(images), np.asarray(labels, np.int64), names,
                 {c: k for c, k in counts.items() if c not in index})


def patch_config(patch_size: int, **overrides: Any) -> GanConfig:
    """The GanConfig of a patch run: the lean CPU nets at ``patch_size``², lesion classes."""
    fields = {k: v for k, v in PATCH_DEFAULTS.items() if k in ("min_class_images", "batch",
                                                                "kimg")}
    return GanConfig(**{**fields, **overrides, "resolution": patch_size, "classes": "lesion"})


def train_patch_generator(site_dir: Path, cfg: GanConfig, run_name: str = "default",
                          margin: float = PATCH_DEFAULTS["margin"],
                          progress: bool = True) -> Path:
    """Train (or resume) ``SITE/patch-runs/<run_name>`` on the train split's lesion crops."""
    from node.training.loop import train_arrays

    if cfg.resolution is None:
        raise InsertionError("a patch generator needs a patch size (power of two, e.g. 16)")
    if not 1.0 <= margin <= 4.0:
        raise InsertionError(f"--margin must be in [1, 4] (crop side / box side), got {margin}")
    size = int(cfg.resolution)
    crops = lesion_crops(site_dir, size, margin, cfg.min_class_images)
    run_dir = patch_run_dir(site_dir, run_name)
    marker = run_dir / MARKER
    if marker.exists():
        _check_marker(marker, crops.class_names, size, margin)
    cfg = replace(cfg, classes="lesion")
    train_arrays(crops.images, crops.labels, crops.class_names, cfg, run_dir,
                 store_size=size, progress=progress, where=site_dir)
    counts = np.bincount(crops.labels, minlength=len(crops.class_names)).tolist()
    body = {"kind": "lesion_patches", "patch_size": size, "margin": margin,
            "class_names": crops.class_names,
            "crops": dict(zip(crops.class_names, counts, strict=True)),
            "left_out": crops.left_out, "min_class_images": cfg.min_class_images}
    atomic_write_bytes(marker, (json.dumps(body, indent=2) + "\n").encode())
    return run_dir


def _check_marker(marker: Path, class_names: list[str], patch_size: int | None,
                  margin: float | None = None) -> dict[str, Any]:
    """The marker's content, or an InsertionError naming every field that differs."""
    try:
        body: dict[str, Any] = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise InsertionError(f"{marker}: unreadable ({exc}); retrain the patch generator "
                             "with a new --run-name") from None
    if body.get("kind") != "lesion_patches":
        raise InsertionError(f"{marker}: not a lesion patch generator")
    diffs = []
    if list(body.get("class_names", [])) != list(class_names):
        diffs.append(f"classes: generator has {body.get('class_names')}, this site's lesion "
                     f"classes with enough boxes are {class_names}")
    if patch_size is not None and body.get("patch_size") != patch_size:
        diffs.append(f"patch size: generator has {body.get('patch_size')}², requested "
                     f"{patch_size}²")
    if margin is not None and body.get("margin") != margin:
        diffs.append(f"margin: generator has {body.get('margin')}, requested {margin}")
    if diffs:
        raise InsertionError(f"{marker.parent}: patch generator does not fit ("
                             f"{'; '.join(diffs)}); train one with `synthlearn node "
                             "train-patches --run-name NEW`")
    return body


def load_patch_generator(site_dir: Path, run_name: str = "default",
                         patch_size: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(EMA patch generator, its patches.json), refused when it does not fit the site now."""
    from node.training.loop import load_trained

    run_dir = patch_run_dir(site_dir, run_name)
    marker = run_dir / MARKER
    if not marker.exists():
        raise InsertionError(
            f"{run_dir}: no lesion patch generator here; train one with `synthlearn node "
            f"train-patches --site-dir {site_dir} --run-name {run_name}`")
    G, meta = load_trained(run_dir)
    threshold = int(meta["config"].get("min_class_images", 1))
    counts = boxed_counts(SiteStore.open(site_dir))
    body = _check_marker(marker, patch_classes(counts, threshold), patch_size)
    if list(meta["class_names"]) != list(body["class_names"]) or \
            int(G.resolution) != int(body["patch_size"]):
        raise InsertionError(f"{run_dir}: checkpoint (classes {meta['class_names']}, "
                             f"{G.resolution}²) and {MARKER} disagree; retrain")
    return G, body
