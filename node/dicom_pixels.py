"""DICOM → normalised store pixels: the one place that decides what a radiograph looks like.

Every accepted DICOM goes through :func:`store_pixels`; every rejected one raises
:class:`SkipFileError` with a short reason category and a one-line detail naming the file, so a
hospital admin can fix the source instead of guessing.

Display policy (DICOM PS3.3 C.11 order: modality LUT → VOI → presentation):

1. **Modality LUT.** A non-empty Modality LUT Sequence when present (its first item; inputs
   below/above the table take its first/last entry), else Rescale Slope/Intercept (also when
   the sequence is present but empty). An unusable Modality LUT (no LUT Data, a descriptor
   without three values, fewer entries than declared) is skipped as ``unsupported-pixels``
   before decoding: there is no fallback for what the stored values mean. A missing
   slope/intercept means 1/0; a slope of 0 (invalid: a flat image) means no rescale at all,
   as in dcmtk; a slope or intercept that is not a number is skipped as
   ``unsupported-pixels``.
2. **VOI.** When several transforms are present, the **first VOI LUT in the VOI LUT Sequence**
   wins (the vendor's display curve, as pydicom prefers) if it is usable, else the **first
   Window Center/Width pair** (the primary window; later pairs are alternatives) with its VOI
   LUT Function (LINEAR, LINEAR_EXACT or SIGMOID), else the **min–max of the modality values in
   the kept square** (padding excluded, see 4). A VOI LUT is unusable, and skipped for the next
   step, when it cannot be parsed, holds fewer entries than its LUT Descriptor declares, or is
   flat (every entry equal). Its output is normalised by 2^bits − 1, bits being the
   descriptor's third value (PS3.3 C.11.2.1.1), or by the table's maximum when that exceeds
   2^bits − 1 (a known vendor error); 8-bit entries are read one per 16-bit word when the data
   holds ≥ 2 bytes per entry, else one per byte. A LINEAR window of width 1 is the step function
   of PS3.3 C.11.2.1.2.1 (maximum where x > c − 0.5, else minimum).
3. **Inversion** after VOI, once, when Photometric Interpretation is MONOCHROME1 **or**
   Presentation LUT Shape (2050,0020) is INVERSE, so bone is always bright. INVERSE turns the
   VOI output into P-values by inversion (PS3.3 C.11.6); in the DX family it accompanies
   MONOCHROME1 and names that same inversion, so MONOCHROME1 + INVERSE is inverted once, not
   twice (the double inversion was a viewer bug, e.g. Weasis #372). IDENTITY adds nothing; a
   non-conformant MONOCHROME1 + IDENTITY keeps the Photometric Interpretation's inversion.
4. **Pixel padding.** Stored values equal to Pixel Padding Value (0028,0120), or within
   [Pixel Padding Value, Pixel Padding Range Limit (0028,0121)] when the limit is present, are
   not image: they are left out of the min–max range and shown black (0 after step 3, i.e. a
   dark background), whatever the VOI.

A kept square that displays as one grey level (a flat exposure, all padding, a window or VOI
LUT outside every pixel value) is skipped as ``blank-image``, not stored as a flat square.

Geometry: centre-crop to the square of the smallest side (the seed method), refuse images
whose smallest side is under ``min_side`` (128 px, the seed rule) or whose Rows × Columns is
over :data:`MAX_PIXELS` (``too-large``, decided from the header), then resize with PIL's
anti-aliased LANCZOS filter on float data (box pre-reduction via ``reducing_gap``), never
nearest-neighbour, which aliases.

Why a lookup table: for ≤16-bit integer pixels the whole chain (modality → VOI → inversion) is
folded into one table indexed by the stored value, so the per-pixel work beyond the decode is
a single gather on the cropped square plus the resize (see ``benchmarks/preprocess_bench.py``).

Multi-frame and colour policy: **skipped with a reason**. A projection radiograph is one
grayscale frame; taking an arbitrary frame of a cine/CT/MR object or a luminance of a
secondary-capture photo would silently put non-radiographs into the store.

Header defaults: a grayscale image missing Samples per Pixel, Photometric Interpretation, Bits
Stored or Pixel Representation (old and hand-made files) is read as 1, MONOCHROME2, Bits
Allocated, 0 (unsigned); a Photometric Interpretation in lower case or padded with spaces is
read normalised; Bits Stored outside 1..Bits Allocated is read as Bits Allocated. A header
integer that is not a number (e.g. Number of Frames ``1A``) is skipped as
``unsupported-pixels``, naming the element.

Decoding: compressed syntaxes go through pydicom's pixel decoders backed by the declared
plugins (pylibjpeg + openjpeg for JPEG 2000, libjpeg for JPEG/JPEG-LS, rle, or gdcm when
installed). A syntax with no available decoder, or a private/unknown Transfer Syntax UID, is
skipped as ``no-codec``. A file without a file meta header (no preamble, no group 0002; read by
force) gets the transfer syntax of the encoding pydicom detected (implicit or explicit VR
little endian, or explicit big endian), so that it decodes like any other.

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
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from node.errors import SkipFileError

MIN_SIDE = 128
"""The seed rule: images whose smallest side is under 128 px are excluded."""

MAX_PIXELS = 1 << 27
"""Rows × Columns above this (134 M pixels, e.g. 11585²; a 35 × 43 cm film digitised at 50 µm is
61 M) is skipped as ``too-large`` before decoding: a compressed file's header can declare any
size, and the decoder allocates what it declares (60000² at 16 bits: 7 GB per worker)."""

# Reason categories (short codes shown in summaries; the detail line names the file).
NOT_DICOM = "not-dicom"
TRUNCATED = "truncated"
MISSING_PIXELS = "missing-pixel-data"
LENGTH_MISMATCH = "length-mismatch"
NO_CODEC = "no-codec"
TOO_SMALL = "too-small"
TOO_LARGE = "too-large"
UNLABELLED = "unlabelled"
UNKNOWN_LABEL = "unknown-label"
UNREADABLE = "unreadable"
MULTI_FRAME = "multi-frame"
COLOUR = "colour"
UNSUPPORTED = "unsupported-pixels"
DECODE_ERROR = "decode-error"
DUPLICATE = "duplicate-image-id"
DUPLICATE_INSTANCE = "duplicate-instance"
BURNED_IN = "burned-in-annotation"
FRAME_SIZE = "frame-size-mismatch"
FOR_PROCESSING = "for-processing"
BLANK = "blank-image"

FOR_PROCESSING_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image - For Processing
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography X-Ray Image - For Processing
    "1.2.840.10008.5.1.4.1.1.1.3.1",  # Digital Intra-Oral X-Ray Image - For Processing
    "1.2.840.10008.5.1.4.1.1.13.1.5",  # Breast Projection X-Ray Image - For Processing
})
"""SOP classes whose images are raw detector data, not for display (PS3.3 C.8.11.1.1.1)."""

FloatImage = npt.NDArray[np.float32]


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
    label = name or str(path)
    if not isinstance(path, Path):
        return _read_open(path, label)
    try:
        fp = path.open("rb")
    except OSError as exc:
        raise SkipFileError(UNREADABLE, f"{label}: cannot be read ({exc.strerror})") from None
    with fp:
        return _read_open(fp, label)


def _read_open(fp: IO[bytes], label: str) -> Any:
    import pydicom
    from pydicom.errors import BytesLengthException, InvalidDicomError

    start = fp.tell()
    size = fp.seek(0, io.SEEK_END)
    fp.seek(start)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ds = pydicom.dcmread(fp)
            except InvalidDicomError:
                # Old files may lack the 128-byte preamble; accept them only if, read by force,
                # they look like an image object at all.
                fp.seek(start)
                ds = pydicom.dcmread(fp, force=True)
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
        if isinstance(exc, (struct.error, BytesLengthException)) and fp.tell() >= size:
            # a short read at the end of the file: it ends inside an element's header
            raise SkipFileError(TRUNCATED, f"{label}: file ends inside its DICOM header "
                                "(an element is cut short); copy it again from the archive"
                                ) from None
        raise SkipFileError(
            UNREADABLE, f"{label}: DICOM header could not be parsed ({type(exc).__name__}: "
            f"{_one_line(exc)})"
        ) from None
    for w in caught:
        if "End of file reached" in str(w.message):
            raise SkipFileError(TRUNCATED, f"{label}: file ends before the pixel data is complete")
    _check_not_truncated(ds, label, size)
    _fill_transfer_syntax(ds)
    return ds


def _fill_transfer_syntax(ds: Any) -> None:
    """A file read without a file meta header has no Transfer Syntax UID, which pydicom needs
    to decode the pixels; take it from the encoding the dataset was actually read with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        return
    if implicit:
        uid = ImplicitVRLittleEndian
    else:
        uid = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = uid


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_not_truncated(ds: Any, label: str, size: int | None = None) -> None:
    """pydicom silently shortens the last element of a cut file; compare it with its header.

    It also stops silently when fewer than 8 bytes (less than an element header) follow the
    last element: with ``size`` (the file's length) such a tail before the pixel data is a
    cut file, not a complete object without pixels."""
    keys = list(ds.keys())
    if not keys:
        if getattr(ds, "preamble", None) is not None:  # 'DICM' was there: a cut file
            raise SkipFileError(TRUNCATED, f"{label}: file ends in its DICOM file header, "
                                "before any data element; copy it again from the archive")
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
    tell = getattr(raw, "value_tell", None)
    meta = getattr(ds, "file_meta", None)
    deflated = getattr(meta, "TransferSyntaxUID", None) == "1.2.840.10008.1.2.1.99"
    if (
        size is not None
        and "PixelData" not in ds
        and not deflated  # offsets count the inflated stream, not the file
        and isinstance(tell, int)
        and length is not None
        and length != 0xFFFFFFFF
        and 0 < size - (tell + length) < 8
    ):
        raise SkipFileError(
            TRUNCATED, f"{label}: file ends inside the header of the element after "
            f"{raw.tag}, before the pixel data; copy it again from the archive")


def check_image(ds: Any, label: str, min_side: int = MIN_SIDE, *,
                allow_burned_in: bool = False) -> None:
    """Everything that can be decided from the header, before paying for a decode.

    ``BurnedInAnnotation = YES`` (PS3.3 C.7.6.1.1.7: text such as a name is part of the
    pixels) is skipped unless the admin passes ``allow_burned_in``: a GAN can learn to
    reproduce such text, and it would leave the site inside synthetic images.

    A FOR PROCESSING image (Presentation Intent Type, or a For Processing SOP class) is
    skipped as ``for-processing``: it is detector data "intended to be further processed
    before being displayed" (PS3.3 C.8.11.1.1.1), usually archived next to the FOR
    PRESENTATION image of the same exposure, which is the one a reader sees."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES" and not allow_burned_in:
        raise SkipFileError(BURNED_IN, f"{label}: BurnedInAnnotation is YES (identifying text "
                            "may be part of the pixels); skipped unless --allow-burned-in")
    intent = str(ds.get("PresentationIntentType", "") or "").strip().upper()
    sop_class = str(ds.get("SOPClassUID", "") or getattr(
        getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "").strip()
    if intent == "FOR PROCESSING" or sop_class in FOR_PROCESSING_CLASSES:
        raise SkipFileError(FOR_PROCESSING, f"{label}: a FOR PROCESSING image (raw detector "
                            "data meant to be processed before display, PS3.3 C.8.11.1.1.1); "
                            "ingest the FOR PRESENTATION image of the same exposure")
    if "PixelData" not in ds:
        other = next((k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds), None)
        if other:
            raise SkipFileError(UNSUPPORTED, f"{label}: {other} (float pixels) is not a radiograph")
        if ("Rows" in ds and "Columns" in ds) or _is_image_class(sop_class):
            raise SkipFileError(MISSING_PIXELS, f"{label}: no PixelData element, although the "
                                "header describes an image (its SOP class, or Rows and "
                                "Columns); the file may be cut short: copy it again from the "
                                "archive")
        raise SkipFileError(MISSING_PIXELS, f"{label}: no PixelData element (not an image object)")
    for kw in ("Rows", "Columns", "BitsAllocated"):
        if ds.get(kw) in (None, "", 0):
            raise SkipFileError(UNSUPPORTED, f"{label}: PixelData present but {kw} is missing")
    frames = _header_int(ds, "NumberOfFrames", 1, label)
    if frames > 1:
        raise SkipFileError(MULTI_FRAME, f"{label}: {frames} frames; only single-frame radiographs "
                       "are ingested (policy: multi-frame objects are skipped)")
    spp = _header_int(ds, "SamplesPerPixel", 1, label)
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper()
    if spp != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise SkipFileError(COLOUR, f"{label}: {photometric} with {spp} samples/pixel; only "
                       "grayscale (MONOCHROME1/2) radiographs are ingested")
    bits = int(ds.BitsAllocated)
    _fill_image_header(ds, photometric, label)
    if ds.get("ModalityLUTSequence"):  # an unusable modality transform is skipped before
        modality_lut(ds, label)         # decoding
    else:
        _rescale(ds, label)
    if bits not in (8, 16, 32):
        raise SkipFileError(UNSUPPORTED, f"{label}: {bits} bits allocated per pixel is not "
                            "supported")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if min(rows, cols) < min_side:
        raise SkipFileError(TOO_SMALL, f"{label}: {rows}×{cols} px; the smallest side must be "
                       f"≥ {min_side} px")
    if rows * cols > MAX_PIXELS:
        raise SkipFileError(TOO_LARGE, f"{label}: {rows}×{cols} px is over the {MAX_PIXELS} "
                            "pixel limit of one radiograph; not decoded")
    tsyntax = UID(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) or
                  "1.2.840.10008.1.2.1")
    try:
        compressed = tsyntax.is_compressed
    except ValueError:  # not a transfer syntax pydicom knows (private or invalid UID)
        raise SkipFileError(
            NO_CODEC, f"{label}: transfer syntax {tsyntax} is not a known transfer syntax "
            "(private or invalid UID); no decoder is available for it") from None
    if compressed:
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError:
            decoder = None
        if decoder is None or not decoder.is_available:
            raise SkipFileError(
                NO_CODEC, f"{label}: transfer syntax {tsyntax.name} ({tsyntax}) has no "
                "installed decoder; install pylibjpeg-openjpeg/-libjpeg or gdcm")
        _check_frame_size(ds, rows, cols, label)
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


def codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) a compressed frame declares in its own header — JPEG / JPEG-LS SOF or
    JPEG 2000 SIZ — or None when it declares none this parser knows (RLE: sized by the
    DICOM header). Reads at most the first 64 KiB; decodes nothing."""
    head = frame[:65536]
    if head[:2] == b"\xff\xd8":  # JPEG family: walk the markers up to the frame header
        pos = 2
        while pos + 4 <= len(head):
            if head[pos] != 0xFF:
                return None
            marker = head[pos + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                pos += 1 if marker == 0xFF else 2
                continue
            (length,) = struct.unpack(">H", head[pos + 2:pos + 4])
            if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
                if pos + 9 > len(head):
                    return None
                rows, cols = struct.unpack(">HH", head[pos + 5:pos + 9])
                return rows, cols
            pos += 2 + length
        return None
    at = head.find(b"\xff\x4f\xff\x51")  # JPEG 2000 codestream: SOC then SIZ
    if at >= 0 and at + 24 <= len(head):
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", head[at + 8:at + 24])
        return ysiz - yo, xsiz - xo
    return None


def _check_frame_size(ds: Any, rows: int, cols: int, label: str) -> None:
    """The first compressed frame's own declared size must be the header's Rows × Columns:
    decoders allocate what the codestream declares, whatever the DICOM header says."""
    from pydicom.encaps import generate_frames

    try:
        first = next(iter(generate_frames(ds.PixelData, number_of_frames=1)), b"")
    except (ValueError, StopIteration, TypeError, KeyError, struct.error):
        return  # malformed encapsulation: the decoder reports it as a decode error
    declared = codestream_size(first)
    if declared is None:
        return
    r, c = declared
    if r * c > MAX_PIXELS:
        raise SkipFileError(TOO_LARGE, f"{label}: the compressed frame declares {r}×{c} px, "
                            f"over the {MAX_PIXELS} pixel limit; not decoded")
    if (r, c) != (rows, cols) and r != 0:  # JPEG may leave rows 0 (set by a DNL marker)
        raise SkipFileError(FRAME_SIZE, f"{label}: the compressed frame declares {r}×{c} px "
                            f"but Rows×Columns is {rows}×{cols}; not decoded")


def _is_image_class(uid: str) -> bool:
    """Whether a SOP Class UID is a known image storage class (by pydicom's UID names)."""
    from pydicom.uid import UID

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an invalid UI value warns
        return "Image Storage" in UID(uid).name


def _header_int(ds: Any, keyword: str, default: int, label: str) -> int:
    """An integer header value (missing or empty → ``default``), or SkipFileError."""
    try:
        value = ds.get(keyword)
        return default if value in (None, "") else int(value)
    except (TypeError, ValueError):
        raise SkipFileError(UNSUPPORTED, f"{label}: {keyword} is not a whole number; the image "
                            "header is damaged") from None


def _fill_image_header(ds: Any, photometric: str, label: str) -> None:
    """Give a checked grayscale header what pydicom's decoders require (module docstring)."""
    if ds.get("PhotometricInterpretation") != photometric:
        ds.PhotometricInterpretation = photometric
    if "SamplesPerPixel" not in ds:
        ds.SamplesPerPixel = 1
    allocated = int(ds.BitsAllocated)
    if not 1 <= _header_int(ds, "BitsStored", 0, label) <= allocated:
        ds.BitsStored = allocated
    if _header_int(ds, "PixelRepresentation", -1, label) not in (0, 1):
        ds.PixelRepresentation = 0


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
    if ds.get("ModalityLUTSequence"):  # an empty sequence means: use the rescale
        lut = modality_lut(ds)
        idx = np.clip(np.rint(values.astype(np.float64)) - lut.first, 0, len(lut.table) - 1)
        return lut.table[idx.astype(np.int64)]
    slope, intercept = _rescale(ds)
    return values.astype(np.float64) * slope + intercept


def modality_lut(ds: Any, label: str = "dataset") -> Lut:
    """The first Modality LUT of a non-empty Modality LUT Sequence (raw output values), or
    SkipFileError: unlike a VOI LUT there is no next step to fall back to, since the LUT
    defines what the stored values mean (PS3.3 C.11.1)."""
    try:
        return _lut_item(ds.ModalityLUTSequence[0], ds)
    except Exception as exc:
        why = exc.args[0] if isinstance(exc, ValueError) and exc.args else "malformed"
        raise SkipFileError(UNSUPPORTED, f"{label}: the Modality LUT Sequence is unusable "
                            f"({why}); the stored values cannot be mapped") from None


def _rescale(ds: Any, label: str = "dataset") -> tuple[float, float]:
    """(slope, intercept) by the module docstring, step 1, or SkipFileError when unusable."""
    values = []
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        try:
            raw = ds.get(keyword)
            if hasattr(raw, "__len__") and not isinstance(raw, str):  # VM > 1: the first
                raw = raw[0] if len(raw) else None
            value = default if raw in (None, "") else float(raw)
        except (TypeError, ValueError):
            value = float("nan")
        if not np.isfinite(value):
            raise SkipFileError(UNSUPPORTED, f"{label}: {keyword} is not a number; the modality "
                                "rescale cannot be applied")
        values.append(value)
    slope, intercept = values
    if slope == 0.0:  # invalid (every pixel the same value): ignore the rescale, as dcmtk does
        return 1.0, 0.0
    return slope, intercept


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


@dataclass(frozen=True)
class Lut:
    """A parsed LUT item: its entries (as floats), the first mapped input value and the
    declared bits per entry."""

    table: npt.NDArray[np.float64]
    first: int
    bits: int = 16


VoiLut = Lut
"""A usable VOI LUT: :class:`Lut` with entries already normalised to [0, 1]."""


def _lut_item(item: Any, ds: Any) -> Lut:
    """LUT Descriptor + LUT Data of one Modality or VOI LUT item, or ValueError saying why.

    The number of entries 0 means 65536; 8-bit entries are read one per 16-bit word when the
    data holds ≥ 2 bytes per entry, else one per byte (module docstring, step 2)."""
    if "LUTDescriptor" not in item or "LUTData" not in item:
        raise ValueError("LUT Descriptor or LUT Data missing")
    desc = list(item.LUTDescriptor) if hasattr(item.LUTDescriptor, "__len__") else []
    if len(desc) != 3:
        raise ValueError("LUT Descriptor does not hold 3 values")
    n, first, bits = (int(v) for v in desc)
    n = n or 65536
    if not 1 <= bits <= 16:
        raise ValueError(f"{bits} bits per LUT entry")
    data = item.LUTData
    if isinstance(data, bytes):
        if bits <= 8 and len(data) < 2 * n:
            lut = np.frombuffer(data, np.uint8)  # one entry per byte
        else:  # one entry per 16-bit word (8-bit entries too, when there is room)
            little = _little_endian(ds)
            lut = np.frombuffer(data[: len(data) // 2 * 2], "<u2" if little else ">u2")
    else:
        lut = np.asarray(data).ravel()
    if len(lut) < n:
        raise ValueError(f"{len(lut)} LUT entries, {n} declared")
    return Lut(lut[:n].astype(np.float64), first, bits)


def voi_lut(ds: Any) -> VoiLut | None:
    """The first VOI LUT of the VOI LUT Sequence, or None when absent or unusable.

    The single decision "is there a usable VOI LUT" for both the display table and the
    min–max fallback: unparseable, shorter than declared or flat (every entry equal) → None.
    """
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    try:
        lut = _lut_item(seq[0], ds)
        table = lut.table
        lo, hi = float(table.min()), float(table.max())
        if not hi > lo:
            return None
        # Normalise by the declared output range; a table exceeding it (a vendor error) by its
        # own maximum.
        scale = max(float((1 << lut.bits) - 1), hi)
        return Lut(np.clip(table / scale, 0.0, 1.0), lut.first, lut.bits)
    except Exception:  # malformed VOI LUT: fall back to the next policy step
        return None


def _little_endian(ds: Any) -> bool:
    little = ds.original_encoding[1]
    if little is None:
        tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        little = tsyntax != "1.2.840.10008.1.2.2"  # Explicit VR Big Endian
    return bool(little)


def _voi(mod: npt.NDArray[np.float64], ds: Any, mod_range: tuple[float, float],
         lut: VoiLut | None = None) -> npt.NDArray[np.float64]:
    """Modality values → [0, 1] by the VOI policy in the module docstring.

    ``lut`` is :func:`voi_lut` of ``ds`` (the caller decided already).
    """
    if lut is not None:  # out-of-range inputs take the first/last entry (PS3.3 C.11.2.1.1)
        idx = np.clip(np.rint(mod) - lut.first, 0, len(lut.table) - 1).astype(np.int64)
        return lut.table[idx]
    win = _window(ds)
    if win is not None:
        c, w, func = win
        if func == "SIGMOID":
            return 1.0 / (1.0 + np.exp(-4.0 * (mod - c) / w))
        if func == "LINEAR_EXACT":
            return np.clip((mod - c) / w + 0.5, 0.0, 1.0)
        # PS3.3 C.11.2.1.2.1 LINEAR; width 1 is a step at c - 0.5
        if w <= 1.0:
            return np.where(mod > c - 0.5, 1.0, 0.0)
        return np.clip((mod - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0)
    lo, hi = mod_range
    if hi <= lo:
        return np.zeros_like(mod)
    return np.clip((mod - lo) / (hi - lo), 0.0, 1.0)


def padding_range(ds: Any, dtype: np.dtype[Any]) -> tuple[int, int] | None:
    """Stored values that are padding, as an inclusive (low, high), or None.

    Pixel Padding Value alone pads one value; with Pixel Padding Range Limit, every value
    between the two (either order). A value written with the other signedness (US for a signed
    image) is read as the same bit pattern; one that fits neither is ignored.
    """
    if "PixelPaddingValue" not in ds or dtype.kind not in "iu":
        return None
    try:
        value = _as_stored(ds.PixelPaddingValue, dtype)
        limit = _as_stored(ds.get("PixelPaddingRangeLimit", ds.PixelPaddingValue), dtype)
    except (TypeError, ValueError):
        return None
    if value is None or limit is None:
        return None
    return min(value, limit), max(value, limit)


def _as_stored(raw: Any, dtype: np.dtype[Any]) -> int | None:
    if isinstance(raw, (bytes, str)) or (hasattr(raw, "__len__") and len(raw) != 1):
        return None
    value = int(raw[0] if hasattr(raw, "__len__") else raw)
    info = np.iinfo(dtype)
    if info.min <= value <= info.max:
        return value
    bits = dtype.itemsize * 8
    if -(1 << (bits - 1)) <= value < (1 << bits):  # same bit pattern, other signedness
        return int(np.array(value & ((1 << bits) - 1), dtype=f"u{dtype.itemsize}")
                   .view(dtype))
    return None


def _is_mono1(ds: Any) -> bool:
    return str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"


def _inverted(ds: Any) -> bool:
    """Step 3 of the module docstring: MONOCHROME1 or Presentation LUT Shape INVERSE."""
    shape = ds.get("PresentationLUTShape", "")
    return _is_mono1(ds) or str(shape or "").strip().upper() == "INVERSE"


def display_lut(ds: Any, dtype: np.dtype[Any], mod_range: tuple[float, float]) -> FloatImage:
    """Table indexed by the stored value's bit pattern (uint view) → displayed value in [0, 1].

    ``mod_range`` (modality-value min/max of the kept region) is used only when the file has
    no usable VOI LUT and no window. Padding values (module docstring, 4) map to 0.
    """
    return _display_table(ds, dtype, mod_range, voi_lut(ds))


def _display_table(ds: Any, dtype: np.dtype[Any], mod_range: tuple[float, float],
                   lut: VoiLut | None) -> FloatImage:
    if dtype.itemsize not in (1, 2) or dtype.kind not in "iu":
        raise ValueError(f"no lookup table for {dtype}")
    bits = dtype.itemsize * 8
    domain = np.arange(1 << bits, dtype=np.uint8 if bits == 8 else np.uint16).view(dtype)
    out = _voi(_modality(domain, ds), ds, mod_range, lut)
    if _inverted(ds):
        out = 1.0 - out
    pad = padding_range(ds, dtype)
    if pad is not None:
        out[(domain >= pad[0]) & (domain <= pad[1])] = 0.0
    return out.astype(np.float32)


def _padding_mask(crop: npt.NDArray[Any], ds: Any) -> npt.NDArray[np.bool_] | None:
    pad = padding_range(ds, crop.dtype)
    if pad is None:
        return None
    return (crop >= pad[0]) & (crop <= pad[1])


def _modality_range(crop: npt.NDArray[Any], ds: Any,
                    padding: npt.NDArray[np.bool_] | None = None) -> tuple[float, float]:
    """Min/max modality value of the region, padding pixels left out ((0, 0) if all padding)."""
    values = crop if padding is None else crop[~padding]
    if values.size == 0:
        return 0.0, 0.0
    if ds.get("ModalityLUTSequence"):
        vals = _modality(values, ds)
        return float(vals.min()), float(vals.max())
    ends = _modality(np.array([values.min(), values.max()]), ds)
    return float(ends.min()), float(ends.max())


def displayed(crop: npt.NDArray[Any], ds: Any) -> FloatImage:
    """Stored values (any region) → float32 [0, 1], bone bright.

    ≤16-bit integers go through one gather from a table computed in float64 (so MONOCHROME1
    and MONOCHROME2 copies of an image give bit-identical floats); anything else is computed
    directly. (A float32 fused multiply-add for affine chains was measured: ≤ 15 % faster per
    file but not bit-exact between MONOCHROME1 and 2, so it is not used.)
    """
    lut = voi_lut(ds)
    needs_range = lut is None and _window(ds) is None  # the min–max fallback is taken
    padding = _padding_mask(crop, ds) if needs_range or crop.dtype.itemsize > 2 else None
    mod_range = _modality_range(crop, ds, padding) if needs_range else (0.0, 1.0)
    if crop.dtype.kind in "iu" and crop.dtype.itemsize <= 2:
        table = _display_table(ds, crop.dtype, mod_range, lut)  # padding → 0 in the table
        index = crop.view(np.uint8 if crop.dtype.itemsize == 1 else np.uint16)
        return table[index]
    out64 = _voi(_modality(crop, ds), ds, mod_range, lut)
    if _inverted(ds):
        out64 = 1.0 - out64
    if padding is not None:
        out64[padding] = 0.0
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
    """The whole image, displayed (modality → VOI → inversion), float32 [0, 1]."""
    return displayed(decode(ds, label), ds)


def store_pixels(
    ds: Any, size: int, label: str, min_side: int = MIN_SIDE
) -> tuple[npt.NDArray[np.uint8], Geometry]:
    """A read dataset → uint8 (size, size) store image and the crop geometry, or SkipFileError."""
    check_image(ds, label, min_side)
    return checked_store_pixels(ds, size, label)


def checked_store_pixels(ds: Any, size: int, label: str) -> tuple[npt.NDArray[np.uint8], Geometry]:
    """:func:`store_pixels` for a dataset that already passed :func:`check_image`."""
    arr = decode(ds, label)
    rows, cols = arr.shape
    top, left, side = centre_square(rows, cols)
    crop = arr[top : top + side, left : left + side]
    shown = displayed(crop, ds)
    if shown.min() == shown.max():
        raise SkipFileError(BLANK, f"{label}: the kept square displays as one grey level "
                            "(a flat exposure, all padding, or a window/VOI LUT outside every "
                            "pixel value); nothing to learn from it")
    image = resize_square(shown, size)
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
