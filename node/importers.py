"""Research importers: public data sets into the same site store as hospital DICOMs.

Researchers benchmark on public sets before any hospital is involved, and every later
command reads only the site store, so these importers write through the same
:class:`~node.store.StoreWriter` and produce the same report as ``node preprocess``.

* :func:`import_npz`: the MedMNIST key layout, ``<split>_images`` (N, H, W[, C]) uint8 and
  ``<split>_labels`` (N,) or (N, 1). Splits: ``train`` → train, ``test`` → test, ``val`` →
  ``val_split`` (default test: MedMNIST's README for PneumoniaMNIST here says to use ``val`` as
  the held-out set). Label 0 is "No finding" unless ``class_names`` says otherwise; the others
  are ``class-<k>`` or the given names. Images keep their native size unless ``size`` is given
  (centre crop + anti-aliased resize); the DICOM 128-px minimum does not apply, since these
  sets are small by design. Colour images become luminance (ITU-R BT.601). There are no
  patient IDs, so each image is its own patient.
* :func:`import_png`: a folder of PNG (or JPEG/TIFF) images plus a label sheet (the same
  layouts as :mod:`node.labels`, optional ``patient_id`` and ``split`` columns). 16-bit PNGs are
  scaled by 65535; RGB is converted to luminance (research sets often save grayscale as RGB).
  Centre crop, minimum side (default 128, the seed rule), anti-aliased resize as for DICOM.

Both are incremental: re-importing skips what the store already holds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from node.dicom_pixels import (
    MIN_SIDE,
    TOO_SMALL,
    UNKNOWN_LABEL,
    UNLABELLED,
    UNREADABLE,
    centre_square,
    resize_square,
    to_uint8,
)
from node.errors import IngestError
from node.ingest import REPORT_NAME, scan
from node.labels import LABEL_MAP, checked_box, load_label_map, load_labels, match_keys
from node.store import NORMAL, Accepted, SiteStore, Skipped, StoreWriter
from shared.files import atomic_write_bytes
from shared.progress import optional_progress

NPZ_SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
PICTURE_FORMATS = ("PNG", "JPEG", "TIFF")
"""The Pillow formats import-png decodes (checked by content, not by suffix)."""
NOT_IMAGE = "not-image"


def _gray(images: npt.NDArray[Any], where: str) -> npt.NDArray[np.float32]:
    """(N, H, W[, C]) uint8/float → float32 (N, H, W) in [0, 1]."""
    arr = np.asarray(images)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 4 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if arr.ndim != 3:
        raise IngestError(f"{where}: images have shape {arr.shape}; expected (N, H, W) or "
                          "(N, H, W, 1|3)")
    if arr.dtype == np.uint8 or arr.max(initial=0) > 1.0:
        scale = 255.0 if arr.dtype == np.uint8 or arr.max(initial=0) <= 255 else 65535.0
        return (arr.astype(np.float32) / scale).clip(0, 1)
    return arr.astype(np.float32).clip(0, 1)


def _fit(image: npt.NDArray[np.float32], size: int) -> npt.NDArray[np.uint8]:
    top, left, side = centre_square(*image.shape)
    return to_uint8(resize_square(image[top : top + side, left : left + side], size))


def _report(kind: str, site_dir: Path, source: Path, accepted: int, skipped: list[Skipped],
            found: int, already: int, seconds: float, extra: dict[str, Any]) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    for s in skipped:
        reasons[s.reason] = reasons.get(s.reason, 0) + 1
    report: dict[str, Any] = {
        "kind": kind,
        "source": str(source),
        **extra,
        "files_found": found,
        "already_in_store": already,
        "processed": found - already,
        "accepted": accepted,
        "skipped": len(skipped),
        "skip_reasons": dict(sorted(reasons.items())),
        "skipped_files": [{"file": s.source_key, "reason": s.reason, "detail": s.detail}
                          for s in skipped],
        "seconds": round(seconds, 3),
        "store": SiteStore.open(site_dir).summary(),
    }
    atomic_write_bytes(site_dir / "store" / REPORT_NAME,
                       (json.dumps(report, indent=2) + "\n").encode())
    return report


def import_npz(
    path: Path,
    site_dir: Path,
    size: int | None = None,
    class_names: Sequence[str] | None = None,
    val_split: str = "test",
    test_fraction: float = 0.2,
    progress: bool = True,
    batch_size: int = 4096,
) -> dict[str, Any]:
    """Import a MedMNIST-layout ``.npz`` into the store at ``site_dir``; return the report."""
    path, site_dir = Path(path), Path(site_dir)
    if val_split not in ("train", "test"):
        raise IngestError(f"val split must be 'train' or 'test', not {val_split!r}")
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise IngestError(f"{path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise IngestError(f"{path}: not a readable .npz ({exc})") from None
    started = time.perf_counter()
    with npz:
        keys = set(npz.files)
        splits = [s for s in NPZ_SPLITS if f"{s}_images" in keys]
        if not splits:
            raise IngestError(f"{path}: no '<split>_images' arrays (found {sorted(keys)}); "
                              "expected the MedMNIST layout train_images/train_labels, …")
        missing = [f"{s}_labels" for s in splits if f"{s}_labels" not in keys]
        if missing:
            raise IngestError(f"{path}: {', '.join(missing)} missing for the images present")
        if class_names:
            # Checked before anything is written: a re-import adds only new images, so a
            # store built under the wrong names (`"No finding;Pneumonia"` is one name) stays.
            top = max(int(np.max(npz[f"{s}_labels"], initial=0)) for s in splits)
            if len(class_names) <= top:
                raise IngestError(
                    f"{path}: --class-names gives {len(class_names)} name(s) "
                    f"({', '.join(class_names)}) but the labels run 0…{top}; give one name "
                    "per label, separated by commas")
        shapes = {s: npz[f"{s}_images"].shape for s in splits}
        native = min(min(sh[1], sh[2]) for sh in shapes.values())
        out_size = size or native
        stem = path.stem
        accepted = 0
        found = already = 0
        with StoreWriter(site_dir, size=out_size, test_fraction=test_fraction) as writer:
            known = writer.known_sources()
            bar_cm = optional_progress(progress, "img")
            with bar_cm as bar:
                task = bar.add_task("import-npz", total=sum(sh[0] for sh in shapes.values()),
                                    status="") if bar else None
                for split in splits:
                    labels = np.asarray(npz[f"{split}_labels"])
                    if labels.ndim == 2 and labels.shape[1] == 1:
                        labels = labels[:, 0]
                    if labels.ndim != 1:
                        raise IngestError(
                            f"{path}: {split}_labels has shape {labels.shape}; multi-label "
                            "sets are not supported (one class per image)")
                    raw = npz[f"{split}_images"]
                    if len(raw) != len(labels):
                        raise IngestError(f"{path}: {len(raw)} {split} images but "
                                          f"{len(labels)} labels")
                    target = "train" if split == "train" else (
                        "test" if split == "test" else val_split)
                    batch: list[Accepted] = []
                    for start in range(0, len(raw), batch_size):
                        # Convert one chunk at a time: float copies stay bounded.
                        images = _gray(raw[start : start + batch_size],
                                       f"{path}:{split}_images")
                        for j, img in enumerate(images):
                            i = start + j
                            found += 1
                            key = f"{stem}:{split}:{i:06d}"
                            if key in known:
                                already += 1
                                continue
                            k = int(labels[i])
                            if class_names and k < len(class_names):
                                lesion = class_names[k]
                            else:
                                lesion = NORMAL if k == 0 else f"class-{k}"
                            pix = to_uint8(img) if img.shape == (out_size, out_size) \
                                else _fit(img, out_size)
                            batch.append(Accepted(f"{stem}-{split}-{i:06d}", pix, lesion, key,
                                                  split=target))  # type: ignore[arg-type]
                        if batch:
                            writer.add_batch(batch)
                            accepted += len(batch)
                            batch = []
                        if bar is not None and task is not None:
                            bar.update(task, completed=found)
                if bar is not None and task is not None:
                    bar.update(task, completed=found)
    return _report("import_npz_report", site_dir, path, accepted, [], found, already,
                   time.perf_counter() - started,
                   {"splits": {s: int(sh[0]) for s, sh in shapes.items()},
                    "val_split": val_split, "size": out_size})


def _load_picture(path: Path, rel: str) -> npt.NDArray[np.float32]:
    """One picture, decoded only when it is a format this command documents (Pillow would
    otherwise open any of its ~40 formats by content, whatever the suffix) and its header
    declares no more pixels than one radiograph may have."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    from node.dicom_pixels import MAX_PIXELS, TOO_LARGE

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=PICTURE_FORMATS) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise _Skip(Skipped(rel, TOO_LARGE, f"{rel}: {w}×{h} px is over the "
                                        f"{MAX_PIXELS} pixel limit of one radiograph; not "
                                        "decoded"))
                im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                return np.clip(arr / 65535.0, 0, 1)
            if im.mode == "F":
                return np.clip(np.asarray(im, dtype=np.float32), 0, 1)
            return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        from node.dicom_pixels import TOO_LARGE

        raise _Skip(Skipped(rel, TOO_LARGE, f"{rel}: {exc}")) from None
    except UnidentifiedImageError:
        raise _Skip(Skipped(rel, NOT_IMAGE, f"{rel}: not a {'/'.join(PICTURE_FORMATS)} image "
                            "(the formats import-png reads)")) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise _Skip(Skipped(rel, UNREADABLE, f"{rel}: not a readable image ({exc})")) from None


class _Skip(Exception):  # noqa: N818 - internal control flow, never escapes this module
    def __init__(self, skipped: Skipped) -> None:
        super().__init__(skipped.detail)
        self.skipped = skipped


def import_png(
    folder: Path,
    labels_csv: Path,
    site_dir: Path,
    size: int = 256,
    test_fraction: float = 0.2,
    min_side: int = MIN_SIDE,
    progress: bool = True,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Import a folder of images + label sheet into the store at ``site_dir``."""
    folder, site_dir = Path(folder), Path(site_dir)
    if not folder.is_dir():
        raise IngestError(f"{folder}: not a folder of images")
    map_path = site_dir / LABEL_MAP
    sheet = load_labels(labels_csv, load_label_map(map_path))
    started = time.perf_counter()
    found = scan(folder, exclude=(Path(labels_csv), site_dir))
    skipped: list[Skipped] = []
    notes = list(sheet.notes)
    accepted = 0
    with StoreWriter(site_dir, size=size, test_fraction=test_fraction) as writer:
        writer.forget_skipped(UNLABELLED)
        writer.forget_skipped(UNKNOWN_LABEL)
        known = writer.known_sources()
        known_ids = writer.known_image_ids()
        todo = [rel for rel in found if rel not in known]
        batch: list[Accepted] = []
        skip_batch: list[Skipped] = []
        with optional_progress(progress, "img") as bar:
            task = bar.add_task("import-png", total=len(todo), status="") if bar else None
            for line in notes if bar is not None and todo else ():
                bar.console.print(f"label note: {line}", highlight=False, markup=False)
            for rel in todo:
                try:
                    if Path(rel).suffix.lower() not in IMAGE_SUFFIXES:
                        raise _Skip(Skipped(rel, NOT_IMAGE, f"{rel}: not an image file "
                                            f"({', '.join(sorted(IMAGE_SUFFIXES))})"))
                    row = sheet.lookup(match_keys(rel))
                    if row is None and (why := sheet.rejection(match_keys(rel))) is not None:
                        raise _Skip(Skipped(rel, UNKNOWN_LABEL, f"{rel}: {why}"))
                    if row is None:
                        raise _Skip(Skipped(rel, UNLABELLED, f"{rel}: no row in "
                                            f"{sheet.path.name}; add one (never guessed)"))
                    if row.image_id in known_ids:
                        raise _Skip(Skipped(rel, "duplicate-image-id", f"{rel}: image id "
                                            f"'{row.image_id}' is already in the store"))
                    img = _load_picture(folder / rel, rel)
                    if min(img.shape) < min_side:
                        raise _Skip(Skipped(rel, TOO_SMALL, f"{rel}: {img.shape[0]}×"
                                            f"{img.shape[1]} px; the smallest side must be "
                                            f"≥ {min_side} px"))
                    top, left, side = centre_square(*img.shape)
                    box, note = checked_box(row, sheet.path, img.shape[0], img.shape[1])
                    if box is not None:
                        from node.dicom_pixels import Geometry

                        box = Geometry(img.shape[0], img.shape[1], top, left, side,
                                       size).map_bbox(box)
                    if note:
                        notes.append(note)
                        if bar is not None:
                            bar.console.print(f"label note: {note}", highlight=False,
                                              markup=False)
                    batch.append(Accepted(row.image_id, _fit(img, size), row.lesion, rel,
                                          patient_id=row.patient_id,
                                          split=row.split,  # type: ignore[arg-type]
                                          bbox=box))
                    known_ids.add(row.image_id)
                    accepted += 1
                except _Skip as skip:
                    skipped.append(skip.skipped)
                    skip_batch.append(skip.skipped)
                    if bar is not None:
                        bar.console.print(f"skipped [{skip.skipped.reason}] "
                                          f"{skip.skipped.detail}", highlight=False,
                                          markup=False)
                if len(batch) >= batch_size or len(skip_batch) >= 256:
                    writer.add_batch(batch, skip_batch)
                    batch, skip_batch = [], []
                if bar is not None and task is not None:
                    bar.update(task, advance=1)
            writer.add_batch(batch, skip_batch)
    return _report("import_png_report", site_dir, folder, accepted, skipped, len(found),
                   len(found) - len(todo), time.perf_counter() - started,
                   {"size": size, "label_sheet": {"layout": sheet.layout, "rows": len(sheet)},
                    "label_notes": notes})
