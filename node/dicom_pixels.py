"""DICOM → normalised store pixels: the one place that decides what a radiograph looks like.

Every accepted DICOM goes through :func:`store_pixels`; every rejected one raises
:class:`SkipFileError` with a short reason category and a one-line detail naming the file, so a
hospital admin can fix the source instead of guessing.

Display policy (DICOM PS3.3 C.11 order: modality LUT → VOI → presentation):

1. **Modality LUT.** The Modality LUT Sequence when present, else Rescale Slope/Intercept
   (pydicom's ``apply_modality_lut``). A missing slope/intercept means 1/0.
2. **VOI.** When several transforms are present, the **first VOI LUT in the VOI LUT Sequence**
   wins (the vendor's display curve, as pydicom prefers), else the **first Window
   Center/Width pair** (the primary window; later pairs are alternatives) with its VOI LUT
   Function (LINEAR, LINEAR_EXACT or SIGMOID), else the **min–max of the modality values in the
   kept square**. A VOI LUT's output is scaled by the min/max of its own table.
3. **MONOCHROME1** is inverted after VOI, so bone is always bright.

Geometry: centre-crop to the square of the smallest side (the seed method), refuse images
whose smallest side is under ``min_side`` (128 px, the seed rule), then resize with PIL's
anti-aliased LANCZOS filter on float data (box pre-reduction via ``reducing_gap``), never
nearest-neighbour, which aliases.

Why a lookup table: for ≤16-bit integer pixels the whole chain (modality → VOI → inversion) is
folded into one table indexed by the stored value, so the per-pixel work beyond the decode is
a single gather on the cropped square plus the resize (see ``benchmarks/preprocess_bench.py``).

Multi-frame and colour policy: **skipped with a reason**. A projection radiograph is one
grayscale frame; taking an arbitrary frame of a cine/CT/MR object or a luminance of a
secondary-capture photo would silently put non-radiographs into the store.

Decoding: compressed syntaxes go through pydicom's pixel decoders backed by the declared
plugins (pylibjpeg + openjpeg for JPEG 2000, libjpeg for JPEG/JPEG-LS, rle, or gdcm when
installed). A syntax with no available decoder is skipped as ``no-codec``.

>>> import numpy as np
>>> from pydicom.dataset import Dataset
>>> ds = Dataset()
>>> ds.PhotometricInterpretation = "MONOCHROME1"
>>> ds.BitsStored, ds.PixelRepresentation = 8, 0
>>> display_lut(ds, np.dtype(np.uint8), (0.0, 255.0))[[0, 255]].tolist()
[1.0, 0.0]
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from shared.errors import SynthlearnError

MIN_SIDE = 128
"""The seed rule: images whose smallest side is under 128 px are excluded."""

# Reason categories (short codes shown in summaries; the detail line names the file).
NOT_DICOM = "not-dicom"
TRUNCATED = "truncated"
MISSING_PIXELS = "missing-pixel-data"
LENGTH_MISMATCH = "length-mismatch"
NO_CODEC = "no-codec"
TOO_SMALL = "too-small"
UNLABELLED = "unlabelled"
UNREADABLE = "unreadable"
MULTI_FRAME = "multi-frame"
COLOUR = "colour"
UNSUPPORTED = "unsupported-pixels"
DECODE_ERROR = "decode-error"
DUPLICATE = "duplicate-image-id"

FloatImage = npt.NDArray[np.float32]


class SkipFileError(SynthlearnError):
    """One source file cannot be used; the run goes on. ``reason`` is a short category."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Geometry:
    """Where the kept square sits in the source image (for mapping bounding boxes)."""

    rows: int
    columns: int
    top: int
    left: int
    side: int
    size: int

    def map_bbox(
        self, bbox: tuple[float, float, float, float]
    ) -> tuple[float, float, float, float] | None:
        """Source-pixel (x0, y0, x1, y1) → store pixels; None when it falls outside the crop."""
        s = self.size / self.side
        x0, y0, x1, y1 = bbox
        nx0 = min(max((x0 - self.left) * s, 0.0), self.size)
        nx1 = min(max((x1 - self.left) * s, 0.0), self.size)
        ny0 = min(max((y0 - self.top) * s, 0.0), self.size)
        ny1 = min(max((y1 - self.top) * s, 0.0), self.size)
        if nx1 <= nx0 or ny1 <= ny0:
            return None
        return (round(nx0, 2), round(ny0, 2), round(nx1, 2), round(ny1, 2))


# ---------------------------------------------------------------------------------------------
# Reading and checking


def read_dataset(path: Path | IO[bytes], name: str | None = None) -> Any:
    """Read a DICOM file fully, or raise SkipFileError (not-dicom / truncated / unreadable)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    label = name or str(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ds = pydicom.dcmread(path)
            except InvalidDicomError:
                # Old files may lack the 128-byte preamble; accept them only if, read by force,
                # they look like an image object at all.
                if not isinstance(path, Path):
                    path.seek(0)
                ds = pydicom.dcmread(path, force=True)
                if "PixelData" not in ds or "Rows" not in ds:
                    raise SkipFileError(
                        NOT_DICOM, f"{label}: not a DICOM image (no 'DICM' file header, and no "
                        "image found when read without one)"
                    ) from None
    except SkipFileError:
        raise
    except (PermissionError, IsADirectoryError) as exc:
        raise SkipFileError(UNREADABLE, f"{label}: cannot be read ({exc.strerror})") from None
    except (EOFError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, EOFError) and exc.errno is not None:
            raise SkipFileError(UNREADABLE, f"{label}: cannot be read ({exc.strerror})") from None
        raise SkipFileError(TRUNCATED, f"{label}: file ends early ({exc})") from None
    except Exception as exc:  # pydicom raises many types on damaged headers
        raise SkipFileError(
            UNREADABLE, f"{label}: DICOM header could not be parsed ({type(exc).__name__}: "
            f"{_one_line(exc)})"
        ) from None
    for w in caught:
        if "End of file reached" in str(w.message):
            raise SkipFileError(TRUNCATED, f"{label}: file ends before the pixel data is complete")
    _check_not_truncated(ds, label)
    return ds


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_not_truncated(ds: Any, label: str) -> None:
    """pydicom silently shortens the last element of a cut file; compare it with its header."""
    keys = list(ds.keys())
    if not keys:
        raise SkipFileError(NOT_DICOM, f"{label}: no DICOM elements")
    raw = ds.get_item(keys[-1])
    length = getattr(raw, "length", None)
    value = getattr(raw, "value", None)
    if (
        getattr(raw, "is_raw", False)
        and length is not None
        and length != 0xFFFFFFFF
        and isinstance(value, bytes)
        and len(value) < length
    ):
        raise SkipFileError(
            TRUNCATED,
            f"{label}: file ends early (element {raw.tag} declares {length} bytes, "
            f"{len(value)} present); copy it again from the archive",
        )


def check_image(ds: Any, label: str, min_side: int = MIN_SIDE) -> None:
    """Everything that can be decided from the header, before paying for a decode."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    if "PixelData" not in ds:
        other = next((k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds), None)
        if other:
            raise SkipFileError(UNSUPPORTED, f"{label}: {other} (float pixels) is not a radiograph")
        raise SkipFileError(MISSING_PIXELS, f"{label}: no PixelData element (not an image object)")
    for kw in ("Rows", "Columns", "BitsAllocated"):
        if ds.get(kw) in (None, "", 0):
            raise SkipFileError(UNSUPPORTED, f"{label}: PixelData present but {kw} is missing")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise SkipFileError(MULTI_FRAME, f"{label}: {frames} frames; only single-frame radiographs "
                       "are ingested (policy: multi-frame objects are skipped)")
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if spp != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise SkipFileError(COLOUR, f"{label}: {photometric} with {spp} samples/pixel; only "
                       "grayscale (MONOCHROME1/2) radiographs are ingested")
    bits = int(ds.BitsAllocated)
    if bits not in (8, 16, 32):
        raise SkipFileError(UNSUPPORTED, f"{label}: {bits} bits allocated per pixel is not "
                            "supported")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if min(rows, cols) < min_side:
        raise SkipFileError(TOO_SMALL, f"{label}: {rows}×{cols} px; the smallest side must be "
                       f"≥ {min_side} px")
    tsyntax = UID(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) or
                  "1.2.840.10008.1.2.1")
    if tsyntax.is_compressed:
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError:
            decoder = None
        if decoder is None or not decoder.is_available:
            raise SkipFileError(
                NO_CODEC, f"{label}: transfer syntax {tsyntax.name} ({tsyntax}) has no "
                "installed decoder; install pylibjpeg-openjpeg/-libjpeg or gdcm")
    else:
        raw = ds.get_item("PixelData")
        n = len(raw.value) if getattr(raw, "value", None) is not None else 0
        expected = rows * cols * bits // 8
        if n < expected or n > expected + (expected % 2) + 1:
            raise SkipFileError(
                LENGTH_MISMATCH,
                f"{label}: PixelData holds {n} bytes but Rows×Columns = {rows}×{cols} at "
                f"{bits} bits needs {expected}",
            )


def decode(ds: Any, label: str) -> npt.NDArray[Any]:
    """The stored pixel values of a checked single-frame grayscale dataset."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, TypeError, KeyError,
            AttributeError, OSError, IndexError) as exc:
        raise SkipFileError(DECODE_ERROR, f"{label}: pixel data could not be decoded "
                            f"({_one_line(exc)})") from None
    if arr.ndim != 2:
        raise SkipFileError(UNSUPPORTED, f"{label}: decoded to shape {arr.shape}, expected 2-D")
    return np.asarray(arr)


# ---------------------------------------------------------------------------------------------
# Display transform


def _modality(values: npt.NDArray[Any], ds: Any) -> npt.NDArray[np.float64]:
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(values, ds), dtype=np.float64)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return values.astype(np.float64) * slope + intercept


def _first(value: Any) -> float:
    """Window values may be multi-valued; the first one is the primary window."""
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) \
            else float(value)
    except (TypeError, ValueError):
        return float("nan")


def _window(ds: Any) -> tuple[float, float, str] | None:
    """The primary (first) window as (center, width, function), if present and usable."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
    func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if not (np.isfinite(c) and np.isfinite(w) and w > 0):
        return None
    if func not in ("SIGMOID", "LINEAR_EXACT") and w < 1:
        return None
    return c, w, func


def _has_voi_lut(ds: Any) -> bool:
    return "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0


def _voi(mod: npt.NDArray[np.float64], ds: Any, mod_range: tuple[float, float],
         ) -> npt.NDArray[np.float64]:
    """Modality values → [0, 1] by the VOI policy in the module docstring."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        try:
            item = ds.VOILUTSequence[0]
            n, first, bits = (int(v) for v in item.LUTDescriptor)
            n = n or 65536
            data = item.LUTData
            if isinstance(data, bytes):
                lut = np.frombuffer(data, np.uint16 if bits > 8 else np.uint8)
            else:
                lut = np.asarray(data).ravel()
            lut = lut[:n].astype(np.float64)
            lo, hi = float(lut.min()), float(lut.max())
            if hi > lo:  # out-of-range inputs take the first/last entry (PS3.3 C.11.2.1.1)
                idx = np.clip(np.rint(mod) - first, 0, len(lut) - 1).astype(np.int64)
                return (lut[idx] - lo) / (hi - lo)
        except Exception:  # malformed VOI LUT: fall back to the next policy step
            pass
    win = _window(ds)
    if win is not None:
        c, w, func = win
        if func == "SIGMOID":
            return 1.0 / (1.0 + np.exp(-4.0 * (mod - c) / w))
        if func == "LINEAR_EXACT":
            return np.clip((mod - c) / w + 0.5, 0.0, 1.0)
        # PS3.3 C.11.2.1.2.1 LINEAR
        return np.clip((mod - (c - 0.5)) / max(w - 1.0, 1e-6) + 0.5, 0.0, 1.0)
    lo, hi = mod_range
    if hi <= lo:
        return np.zeros_like(mod)
    return np.clip((mod - lo) / (hi - lo), 0.0, 1.0)


def _is_mono1(ds: Any) -> bool:
    return str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"


def display_lut(ds: Any, dtype: np.dtype[Any], mod_range: tuple[float, float]) -> FloatImage:
    """Table indexed by the stored value's bit pattern (uint view) → displayed value in [0, 1].

    ``mod_range`` (modality-value min/max of the kept region) is used only when the file has
    no VOI LUT and no window.
    """
    if dtype.itemsize not in (1, 2) or dtype.kind not in "iu":
        raise ValueError(f"no lookup table for {dtype}")
    bits = dtype.itemsize * 8
    domain = np.arange(1 << bits, dtype=np.uint8 if bits == 8 else np.uint16).view(dtype)
    out = _voi(_modality(domain, ds), ds, mod_range)
    if _is_mono1(ds):
        out = 1.0 - out
    return out.astype(np.float32)


def _modality_range(crop: npt.NDArray[Any], ds: Any) -> tuple[float, float]:
    if "ModalityLUTSequence" in ds:
        vals = _modality(crop, ds)
        return float(vals.min()), float(vals.max())
    ends = _modality(np.array([crop.min(), crop.max()]), ds)
    return float(ends.min()), float(ends.max())


def displayed(crop: npt.NDArray[Any], ds: Any) -> FloatImage:
    """Stored values (any region) → float32 [0, 1], bone bright.

    ≤16-bit integers go through one gather from a table computed in float64 (so MONOCHROME1
    and MONOCHROME2 copies of an image give bit-identical floats); anything else is computed
    directly. (A float32 fused multiply-add for affine chains was measured: ≤ 15 % faster per
    file but not bit-exact between MONOCHROME1 and 2, so it is not used.)
    """
    needs_range = not _has_voi_lut(ds) and _window(ds) is None
    mod_range = _modality_range(crop, ds) if needs_range else (0.0, 1.0)
    if crop.dtype.kind in "iu" and crop.dtype.itemsize <= 2:
        lut = display_lut(ds, crop.dtype, mod_range)
        index = crop.view(np.uint8 if crop.dtype.itemsize == 1 else np.uint16)
        return lut[index]
    out64 = _voi(_modality(crop, ds), ds, mod_range)
    if _is_mono1(ds):
        out64 = 1.0 - out64
    return out64.astype(np.float32)


def centre_square(rows: int, columns: int) -> tuple[int, int, int]:
    """(top, left, side) of the centred square of the smallest side."""
    side = min(rows, columns)
    return (rows - side) // 2, (columns - side) // 2, side


def resize_square(image: FloatImage, size: int) -> FloatImage:
    """Anti-aliased resize of a float square (LANCZOS; box pre-reduction for big factors)."""
    from PIL import Image

    if image.shape == (size, size):
        return image.astype(np.float32, copy=False)
    arr = np.ascontiguousarray(image, dtype=np.float32)
    pil = Image.frombuffer("F", (arr.shape[1], arr.shape[0]), arr, "raw", "F", 0, 1)  # no copy
    out = pil.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return np.asarray(out, dtype=np.float32)


def to_uint8(image: FloatImage) -> npt.NDArray[np.uint8]:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def normalised(ds: Any, label: str = "dataset") -> FloatImage:
    """The whole image, displayed (modality → VOI → MONOCHROME1 inversion), float32 [0, 1]."""
    return displayed(decode(ds, label), ds)


def store_pixels(
    ds: Any, size: int, label: str, min_side: int = MIN_SIDE
) -> tuple[npt.NDArray[np.uint8], Geometry]:
    """A read dataset → uint8 (size, size) store image and the crop geometry, or SkipFileError."""
    check_image(ds, label, min_side)
    arr = decode(ds, label)
    rows, cols = arr.shape
    top, left, side = centre_square(rows, cols)
    crop = arr[top : top + side, left : left + side]
    image = resize_square(displayed(crop, ds), size)
    return to_uint8(image), Geometry(rows, cols, top, left, side, size)


def load_file(
    path: Path, size: int, name: str | None = None, min_side: int = MIN_SIDE
) -> tuple[npt.NDArray[np.uint8], Geometry, Any]:
    """Path → (store image, geometry, dataset); convenience for tests and notebooks."""
    ds = read_dataset(path, name)
    image, geom = store_pixels(ds, size, name or str(path), min_side)
    return image, geom, ds


def dataset_from_bytes(data: bytes, name: str = "bytes") -> Any:
    """Parse an in-memory DICOM (tests build damaged variants this way)."""
    return read_dataset(io.BytesIO(data), name)
