"""`synthlearn node generate --insert-lesions CLASS`: lesions blended into synthetic normals.

The pipeline (Gupta et al., seed 003, on top of the site's whole-image GAN):

1. the whole-image run draws normal images ("No finding", or "normal" in a binary run);
2. the patch generator (:mod:`node.insertion.patches`) draws patches of CLASS;
3. each patch is resized to the square around a placement drawn near one of the site's real
   boxes of CLASS (:mod:`node.insertion.placement`) and alpha-blended in with a
   distance-based mask (:mod:`node.insertion.blend`);
4. optionally (Gupta's classifier filter) an inserted image is kept only if the classifier S
   trained on the site's real train split gives CLASS a probability ≥ a threshold chosen on
   the train split: the ``filter_quantile`` quantile of the probabilities S gives CLASS on the
   real train images of CLASS ("at least as convincing as the least convincing 10 % of real
   ones"). S has seen those images, so its scores there are optimistic; a low quantile keeps
   the threshold reachable.

Each kept image is labelled CLASS (``abnormal`` in a binary run) and the set's ``info``
records the inserted class and, per image, the inserted lesion box in output pixels
(``info["inserted"]["boxes"]``, aligned with the set's indices), with how patches, placements
and the mask were made. Everything random comes from ``seed``: same inputs, same images.

A DP whole-image run is refused: the patch generator is trained without DP, and its patches
would carry real pixels outside the run's ε.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from node.errors import InsertionError
from node.generate import (
    MAX_DRAW_FACTOR,
    batch_for,
    draw_images,
    generator_info,
    load_generator,
    spine_for,
)
from node.insertion.blend import DEFAULT_CORE, blend_patch
from node.insertion.patches import crop_square, load_patch_generator, resize
from node.insertion.placement import JITTER, SCALE_JITTER, class_boxes, draw_placements
from node.store import NORMAL, SiteStore
from node.training.data import (
    describe_transform,
    images_to_model_space,
    load_site_data,
    tensor_to_uint8,
    to_output_space,
)
from shared.synthetic import SyntheticSet

DEFAULT_FILTER_QUANTILE = 0.1


def _class_indices(names: list[str], lesion: str, run_dir: Path) -> tuple[int, int]:
    """(index of the normal class, index the inserted images get) in the run's class list."""
    normal = NORMAL if NORMAL in names else "normal"
    target = lesion if lesion in names else "abnormal"
    if normal not in names or target not in names:
        raise InsertionError(f"{run_dir}: its classes {names} have no normal class or no "
                             f"class for {lesion!r}; train with --classes lesion")
    return names.index(normal), names.index(target)


def check_lesion(store: SiteStore, lesion: str) -> npt.NDArray[np.float64]:
    """The class's usable train boxes (normalised), or an InsertionError saying why not."""
    site = store.site_dir
    lesions = [c for c in store.lesion_classes() if c != NORMAL]
    if lesion == NORMAL or lesion not in lesions:
        raise InsertionError(f"{site}: {lesion!r} is not one of this site's lesion classes "
                             f"{lesions}")
    boxes = class_boxes(store, lesion)
    if len(boxes) == 0:
        raise InsertionError(
            f"{site}: no usable box of class {lesion!r} in the train split (boxes come from "
            "the label sheet's xmin,ymin,xmax,ymax columns); nowhere to place it")
    return boxes


def _filter_threshold(site_dir: Path, run_name: str, meta: dict[str, Any], target: int,
                      quantile: float) -> tuple[torch.nn.Module, float]:
    """S and the threshold chosen on the real train split (module docstring, step 4)."""
    spine = spine_for(site_dir, run_name, meta)
    images, labels, _, _ = load_site_data(site_dir, meta["config"]["classes"])
    real = images_to_model_space(images[labels == target], meta["transform"])
    with torch.no_grad():
        p = torch.softmax(spine(real).float(), dim=1)[:, target].numpy()
    return spine, float(np.quantile(p, quantile))


def insert_lesions(
    site_dir: Path,
    lesion: str,
    n: int,
    *,
    run_name: str = "default",
    patch_run: str = "default",
    seed: int = 0,
    truncation: float = 1.0,
    out_name: str = "default",
    classifier_filter: bool = False,
    filter_quantile: float = DEFAULT_FILTER_QUANTILE,
) -> SyntheticSet:
    """Make ``n`` images of ``lesion`` by insertion; save them to SITE/synthetic/<out_name>/."""
    site_dir = Path(site_dir)
    if n < 1:
        raise InsertionError(f"-n must be ≥ 1, got {n}")
    if not 0.0 < filter_quantile < 1.0:
        raise InsertionError(f"filter quantile must be in (0, 1), got {filter_quantile}")
    boxes = check_lesion(SiteStore.open(site_dir), lesion)
    PG, patches = load_patch_generator(site_dir, patch_run)
    if lesion not in patches["class_names"]:
        raise InsertionError(
            f"{site_dir}: the patch generator {patch_run!r} has classes "
            f"{patches['class_names']}, not {lesion!r} (it had too few usable boxes: "
            f"{patches.get('left_out', {}).get(lesion, 0)})")
    G, meta = load_generator(site_dir, run_name)
    run_dir = site_dir / "runs" / run_name
    if meta.get("dp") or meta["config"].get("dp_epsilon") is not None:
        raise InsertionError(f"{run_dir}: a DP run; lesion patches come from a generator "
                             "trained without DP, so inserting them would break its guarantee")
    names = list(meta["class_names"])
    normal, target = _class_indices(names, lesion, run_dir)
    tf = meta["transform"]
    side = int(describe_transform(tf)["output_size"])
    spine, threshold = None, None
    if classifier_filter:
        spine, threshold = _filter_threshold(site_dir, run_name, meta, target, filter_quantile)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([seed, 7])
    patch_class = list(patches["class_names"]).index(lesion)
    margin = float(patches["margin"])
    kept_images: list[npt.NDArray[np.uint8]] = []
    kept_boxes: list[list[float]] = []
    drawn = 0
    with torch.no_grad():
        while len(kept_images) < n:
            if drawn >= MAX_DRAW_FACTOR * n:
                raise InsertionError(
                    f"classifier filter kept {len(kept_images)} of {drawn} inserted images of "
                    f"{lesion!r} (threshold {threshold:.3f}); lower --filter-quantile or "
                    "train the patch generator longer")
            b = min(batch_for(G.resolution), max(n - len(kept_images), 16))
            hosts = tensor_to_uint8(to_output_space(
                draw_images(G, normal, b, truncation, gen), tf))
            lesions = tensor_to_uint8(draw_images(PG, patch_class, b, 1.0, gen))
            places = draw_placements(boxes, b, rng) * side
            drawn += b
            out = insert_patches(hosts, lesions, places, margin)
            keep = np.ones(b, bool)
            if spine is not None:
                p = torch.softmax(spine(images_to_model_space(out, tf)).float(), dim=1)
                keep = p[:, target].numpy() >= threshold
            for i in np.flatnonzero(keep)[: n - len(kept_images)]:
                kept_images.append(out[i])
                x0, y0, x1, y1 = np.clip(places[i], 0, side)
                kept_boxes.append([round(float(v), 2) for v in (x0, y0, x1, y1)])
    info = {
        **generator_info(meta, run_name, seed, truncation, tf),
        "per_class": None,
        "filter": None if spine is None else {
            "kind": "classifier S on the inserted image", "quantile": filter_quantile,
            "threshold": threshold, "drawn": {lesion: drawn}, "kept": {lesion: n}},
        "dp": None,
        "teacher": None,
        "inserted": {
            "class": lesion,
            "label": names[target],
            "patch_run": patch_run,
            "patch_size": int(patches["patch_size"]),
            "margin": margin,
            "placement": f"a real train box of the class, centre jitter {JITTER}×size, "
                         f"scale jitter σ={SCALE_JITTER} (log)",
            "alpha": f"elliptical distance mask, 1 up to {DEFAULT_CORE} of the radius, "
                     "linear to 0 at the patch edge",
            "boxes": kept_boxes,
        },
    }
    s = SyntheticSet(np.stack(kept_images), np.full(n, target, np.int64), names, info)
    s.save(site_dir / "synthetic" / out_name)
    return s


def insert_patches(hosts: npt.NDArray[np.uint8], patches: npt.NDArray[np.uint8],
                   places: npt.NDArray[np.float64], margin: float) -> npt.NDArray[np.uint8]:
    """Each patch resized to the crop square of its box (``places``, pixels) and blended into
    its host: the inverse of :func:`node.insertion.patches.lesion_crop`."""
    if not len(hosts) == len(patches) == len(places):
        raise ValueError(f"{len(hosts)} hosts, {len(patches)} patches, {len(places)} places")
    out = np.empty_like(hosts)
    for i, (host, patch, place) in enumerate(zip(hosts, patches, places, strict=True)):
        cx, cy, side = crop_square(
            (float(place[0]), float(place[1]), float(place[2]), float(place[3])), margin)
        px = max(2, round(side))
        out[i], _ = blend_patch(host, resize(patch, px), round(cy - px / 2),
                                round(cx - px / 2))
    return out
