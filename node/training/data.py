"""Real training data for the GAN: the store's train split, mapped to the model resolution.

Store images have whatever side ingestion chose (28 for MedMNIST imports, 256 for DICOM
sites); the networks want a power of two. :func:`fit_transform` records how the two are
related so generation can undo it:

* equal sides: nothing;
* store slightly smaller (gap ≤ 1/4 of the side, e.g. 28 → 32): **reflect-pad** (2 px each
  side for 28 → 32). Lossless, and `node generate` crops the pad off again, so synthetic
  images have exactly the store's size and can be pooled with real ones;
* otherwise: bilinear resize (antialiased when shrinking); synthetic images keep the model
  resolution.

Every run records which of these it used (:func:`describe_transform`: ``metrics.json``,
``metrics.jsonl``, the checkpoint), and so does every synthetic set and bundle made from it
(generation info), so a 512² store trained at 256² is never a silent mismatch downstream.

>>> fit_transform(28, 32)
{'kind': 'pad', 'store_size': 28, 'resolution': 32, 'pad': [2, 2]}
>>> fit_transform(256, 64)['kind']
'resize'
>>> auto_resolution(28), auto_resolution(256), auto_resolution(512), auto_resolution(1000)
(32, 256, 512, 512)
>>> describe_transform(fit_transform(1000, 512))["policy"]
'bilinear resize 1000² → 512² (antialiased)'

"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as F

from node.errors import TrainingError
from node.store import SiteStore
from node.training.config import GanConfig
from shared.synthetic import from_tensor_range, to_tensor_range

log = logging.getLogger(__name__)


MAX_AUTO_RESOLUTION = 512
"""Largest side chosen without being asked (a 1024² GAN needs --resolution 1024 and the
memory for it); larger stores are resized down, and the resize is recorded."""


def auto_resolution(store_size: int) -> int:
    """Smallest power of two ≥ the store side, within [32, MAX_AUTO_RESOLUTION]."""
    r = 32
    while r < store_size and r < MAX_AUTO_RESOLUTION:
        r *= 2
    if r < store_size:
        log.warning("store images are %d² but training defaults to at most %d²: they are "
                    "resized (recorded in the run); pass --resolution to choose", store_size, r)
    return r


def fit_transform(store_size: int, resolution: int) -> dict[str, Any]:
    if store_size == resolution:
        return {"kind": "none", "store_size": store_size, "resolution": resolution}
    gap = resolution - store_size
    if 0 < gap <= store_size // 4:
        return {"kind": "pad", "store_size": store_size, "resolution": resolution,
                "pad": [gap // 2, gap - gap // 2]}
    return {"kind": "resize", "store_size": store_size, "resolution": resolution}


def describe_transform(tf: dict[str, Any]) -> dict[str, Any]:
    """The store → model → output sizes of a run and the policy between them, for records."""
    s, r = int(tf["store_size"]), int(tf["resolution"])
    if tf["kind"] == "none":
        policy, out = f"none ({s}² store trained at {s}²)", s
    elif tf["kind"] == "pad":
        policy, out = f"reflect-pad {s}² → {r}², cropped back to {s}² on output", s
    else:
        how = " (antialiased)" if r < s else ""
        policy, out = f"bilinear resize {s}² → {r}²{how}", r
    return {"kind": tf["kind"], "store_size": s, "model_resolution": r, "output_size": out,
            "policy": policy}


def to_model_space(x: torch.Tensor, tf: dict[str, Any]) -> torch.Tensor:
    """(N, 1, S, S) float → (N, 1, R, R) float (the GAN's and S's input space)."""
    if tf["kind"] == "none":
        return x
    if tf["kind"] == "pad":
        a, b = tf["pad"]
        return F.pad(x, (a, b, a, b), mode="reflect")
    r = int(tf["resolution"])
    return F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False,
                         antialias=r < x.shape[-1])


def to_output_space(x: torch.Tensor, tf: dict[str, Any]) -> torch.Tensor:
    """Undo the pad for generated images (resized models keep their own resolution)."""
    if tf["kind"] == "pad":
        a, b = tf["pad"]
        return x[..., a: x.shape[-2] - b, a: x.shape[-1] - b]
    return x


def images_to_model_space(images: npt.NDArray[np.uint8], tf: dict[str, Any]) -> torch.Tensor:
    """uint8 (N, S, S) → float32 (N, 1, R, R) in [-1, 1], in chunks to bound memory."""
    out = []
    for i in range(0, len(images), 512):
        x = torch.from_numpy(to_tensor_range(images[i:i + 512])).unsqueeze(1)
        out.append(to_model_space(x, tf).clamp_(-1, 1))
    if not out:
        r = int(tf["resolution"])
        return torch.empty(0, 1, r, r)
    return torch.cat(out)


def tensor_to_uint8(x: torch.Tensor) -> npt.NDArray[np.uint8]:
    """float (N, 1, H, W) in [-1, 1] → uint8 (N, H, W)."""
    return from_tensor_range(x.detach().float().cpu().squeeze(1).numpy())


def check_class_counts(
    labels: npt.NDArray[np.int64], class_names: list[str], cfg: GanConfig, where: Path | str
) -> list[str]:
    """Refuse classes under ``cfg.min_class_images``; return warnings for those under the
    GIST threshold (``cfg.warn_class_images``, default 500). A vocabulary class with no image
    at all is absent from this site, not too small: the GAN never draws it
    (:mod:`shared.vocabulary`)."""
    from shared.vocabulary import class_mode

    counts = np.bincount(labels, minlength=len(class_names))
    floor = 1 if class_mode(class_names) == "lesion" else 0  # binary: both classes needed
    low = [f"{n!r}: {int(k)}" for n, k in zip(class_names, counts, strict=True)
           if floor <= k < cfg.min_class_images]
    if low:
        raise TrainingError(
            f"{where}: too few training images to train a GAN for class(es) "
            f"{', '.join(low)} (minimum {cfg.min_class_images} per class; GIST found "
            f"artefacts under ~{cfg.warn_class_images}). Add data, merge classes "
            "(--classes binary), or lower min_class_images in a config file at your own risk"
        )
    warnings = [
        f"class {n!r} has only {int(k)} training images; GIST reported artefacts in GANs "
        f"trained on fewer than ~{cfg.warn_class_images} per class"
        for n, k in zip(class_names, counts, strict=True) if floor <= k < cfg.warn_class_images
    ]
    for w in warnings:
        log.warning(w)
    return warnings


def load_site_data(
    site_dir: Path, classes: str
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], list[str], int]:
    """(train images, labels, class names, store size) from the site store."""
    store = SiteStore.open(site_dir)
    images, labels = store.load("train", classes)  # type: ignore[arg-type]
    names = store.class_names(classes)  # type: ignore[arg-type]
    if len(images) == 0:
        raise TrainingError(f"{site_dir}: the store has no training images")
    return images, labels, names, store.size
