"""Label sheets: which lesion each image shows. Never guessed: no row, no image.

Two layouts are accepted (header row required, extra columns ignored):

* **VinDr style** ``image_id,lesion_type`` (as in VinDr-SpineXR's annotation files), optionally
  with ``xmin,ymin,xmax,ymax`` in source pixels. An image may have several rows (one per
  lesion). ``No finding`` means normal; any other lesion type means abnormal.
* **Generic** ``image_id,label``: ``0``/``normal``/``No finding`` → "No finding";
  ``1``/``abnormal`` → "Abnormal" (a binary-only label: any lesion); other text is read as
  a lesion type, as in the VinDr layout.

**Lesion names** are read through the lesion vocabulary (:mod:`shared.vocabulary`): any
spelling it knows ("osteophyte", "DISC_SPACE_NARROWING") is stored under its one name. A name
outside it is never guessed: the row is left out with one line naming the sheet row, and an
image left with no usable row is skipped as ``unknown-label`` (and retried on the next run).
The site admin can map local words in ``SITE/label-map.csv``::

    label,class
    DSN,Disc space narrowing
    Fracture vertébrale,Vertebral collapse
    Pneumonia,Abnormal

Each ``label`` (matched as the vocabulary matches: case, ``_``/``-``, spaces and a plural
``s`` ignored) becomes ``class``: a vocabulary name, or ``Abnormal`` (binary runs only). The
map wins over the vocabulary's own spellings.

**Several lesions on one image** (several rows of different lesion types): a store image has
one class, so the image keeps the lesion type that is **rarest in this sheet** (fewest
images showing it; ties go to the lower vocabulary id), which favours the classes a GAN and
a CNN see least; one line names the rows and what was kept. A ``No finding`` row beside
lesion rows is ignored. The image's box is the first valid box of the kept type. The result
does not depend on row order.

**Boxes**: a box needs all four of ``xmin,ymin,xmax,ymax``. A row with some of them, a
non-number, a negative coordinate, or zero/negative width or height keeps its image and
class but loses the box, with one line naming the row; so does a box reaching beyond the
source image (checked when the image is read: :func:`checked_box`).

The sheet as spreadsheets save it is read too: UTF-8 with or without a byte-order mark,
UTF-16 with one (Excel's "Unicode text"), else Windows-1252 (Excel's "CSV" on Western
European Windows); comma, semicolon (locales with a decimal comma) or tab separators, taken
from the header line; CRLF or CR line ends; header names in any case; spaces around cells;
rows whose cells are all empty are ignored.

An optional ``patient_id`` column overrides the DICOM PatientID (research importers), and an
optional ``split`` column (``train``/``test``) forces the split.

Matching a file to a row (first hit wins): the path relative to the DICOM folder (with and
without its suffix), the file name, the file stem, then the SOP Instance UID.

>>> import tempfile
>>> p = Path(tempfile.mkdtemp()) / "labels.csv"
>>> _ = p.write_text("image_id,lesion_type\\nimg1,No finding\\nimg2,osteophyte\\n"
...                  "img2,No finding\\nimg3,DSN\\n")
>>> sheet = load_labels(p)
>>> sheet.lookup(["img2"]).lesion, sheet.lookup(["nope"]), sheet.rejection(["img3"])
('Osteophytes', None, "labels.csv:5: lesion type 'DSN' is not a VinDr-SpineXR class; ...")
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from node.errors import IngestError
from shared.vocabulary import LESION_CLASSES, NORMAL, canonical, spelling_key

ABNORMAL = "Abnormal"
LABEL_MAP = "label-map.csv"
"""The site's own words → vocabulary names, in the site directory (module docstring)."""
_NORMAL_WORDS = {"0", "normal", "no finding", "no_finding", "negative"}
_ABNORMAL_WORDS = {"1", "abnormal", "positive"}
_BOX = ("xmin", "ymin", "xmax", "ymax")
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class LabelRow:
    image_id: str
    lesion: str
    bbox: Box | None = None
    patient_id: str | None = None
    split: str | None = None
    line: int = 0
    """Row number in the sheet (header = 1), for messages about this row."""


@dataclass
class LabelSheet:
    path: Path
    layout: str
    rows: dict[str, LabelRow] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    """image id → why none of its rows could be used (one line naming the sheet row)."""
    notes: list[str] = field(default_factory=list)
    """One line per row the sheet changed or ignored (unknown name beside a good row, several
    lesions on one image, an unusable box): printed by the importers, kept in their report."""

    def __len__(self) -> int:
        return len(self.rows)

    def lookup(self, keys: Iterable[str | None]) -> LabelRow | None:
        for key in keys:
            if key and key in self.rows:
                return self.rows[key]
        return None

    def rejection(self, keys: Iterable[str | None]) -> str | None:
        """Why the image these keys name has no usable row, when it had rows at all."""
        for key in keys:
            if key and key in self.rejected:
                return self.rejected[key]
        return None

    def classes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.rows.values():
            counts[r.lesion] = counts.get(r.lesion, 0) + 1
        return dict(sorted(counts.items()))


def load_label_map(path: Path) -> dict[str, str]:
    """A site's ``label-map.csv`` (module docstring) as folded label → class; {} when absent."""
    path = Path(path)
    if not path.is_file():
        return {}
    lines = _decode(path.read_bytes()).splitlines()
    first = lines[0] if lines else ""
    delimiter = "," if "," in first else next((d for d in ";\t" if d in first), ",")
    reader = csv.DictReader(lines, delimiter=delimiter)
    reader.fieldnames = [h.strip().lower() for h in (reader.fieldnames or [])]
    if not {"label", "class"} <= set(reader.fieldnames):
        raise IngestError(f"{path}: header {reader.fieldnames} needs columns label and class")
    out: dict[str, str] = {}
    for line_no, raw in enumerate(reader, start=2):
        label, target = (raw.get("label") or "").strip(), (raw.get("class") or "").strip()
        if not label and not target:
            continue
        name = ABNORMAL if target.lower() == ABNORMAL.lower() else canonical(target)
        if not label or name is None:
            raise IngestError(
                f"{path}:{line_no}: maps {label!r} to {target!r}, which is not a class; use "
                f"one of {', '.join(LESION_CLASSES)} or {ABNORMAL} (binary runs only)")
        key = spelling_key(label)
        if out.get(key, name) != name:
            raise IngestError(f"{path}:{line_no}: {label!r} is already mapped to {out[key]!r}")
        out[key] = name
    return out


def _lesion(value: str, layout: str, label_map: Mapping[str, str]) -> str | None:
    """The stored class of one cell, or None when it names no class (module docstring)."""
    mapped = label_map.get(spelling_key(value))
    if mapped is not None:
        return mapped
    if layout == "generic":
        low = value.strip().lower()
        if low in _NORMAL_WORDS:
            return NORMAL
        if low in _ABNORMAL_WORDS:
            return ABNORMAL
    return canonical(value)


def _bbox(row: dict[str, str], where: str, notes: list[str]) -> Box | None:
    """The row's box, or None (with a note when some box cells were filled but unusable)."""
    cells = [(row.get(k) or "").strip() for k in _BOX]
    if not any(cells):
        return None
    try:
        x0, y0, x1, y1 = (float(c) for c in cells)
    except ValueError:
        notes.append(f"{where}: box cells {cells} are not four numbers; image kept without a "
                     "box")
        return None
    problem = None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or min(x0, y0, x1, y1) < 0:
        problem = "lies outside the image (negative or non-finite coordinate)"
    elif x1 <= x0 or y1 <= y0:
        problem = "has zero area (xmax ≤ xmin or ymax ≤ ymin)"
    if problem:
        notes.append(f"{where}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) {problem}; image kept "
                     "without a box")
        return None
    return (x0, y0, x1, y1)


def checked_box(row: LabelRow, sheet: Path, rows: int, cols: int) -> tuple[Box | None,
                                                                          str | None]:
    """The row's box if it fits a ``rows`` × ``cols`` source image, else (None, one line)."""
    if row.bbox is None:
        return None, None
    x0, y0, x1, y1 = row.bbox
    if x1 > cols or y1 > rows:
        return None, (f"{sheet.name}:{row.line}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) reaches "
                      f"beyond the {cols}×{rows} image; image kept without a box")
    return row.bbox, None


def load_labels(path: Path, label_map: Mapping[str, str] | None = None) -> LabelSheet:
    """Read a VinDr-style or generic label sheet; raise IngestError when it is unusable.

    ``label_map``: the site's :func:`load_label_map` (folded label → class)."""
    path = Path(path)
    label_map = label_map or {}
    try:
        text = _decode(path.read_bytes())
    except FileNotFoundError:
        raise IngestError(f"{path}: label sheet not found; pass --labels with a CSV of "
                          "image_id,lesion_type (VinDr) or image_id,label") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IngestError(f"{path}: label sheet cannot be read ({exc})") from None
    lines = text.splitlines()
    first = lines[0] if lines else ""
    delimiter = "," if "," in first else next((d for d in ";\t" if d in first), ",")
    reader = csv.DictReader(lines, delimiter=delimiter)
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    if "image_id" not in header or not ({"lesion_type", "label"} & set(header)):
        raise IngestError(
            f"{path}: header {header} needs columns image_id and lesion_type (VinDr style) "
            "or image_id and label (generic)"
        )
    layout = "vindr" if "lesion_type" in header else "generic"
    column = "lesion_type" if layout == "vindr" else "label"
    sheet = LabelSheet(path=path, layout=layout)
    by_image: dict[str, list[LabelRow]] = {}
    unknown: dict[str, str] = {}
    for line_no, raw in enumerate(reader, start=2):
        if not any((v or "").strip() for v in raw.values() if isinstance(v, str)):
            continue  # a row of empty cells (spreadsheets leave them at the end)
        image_id = (raw.get("image_id") or "").strip()
        value = (raw.get(column) or "").strip()
        if not image_id or not value:
            raise IngestError(f"{path}:{line_no}: empty image_id or {column}; fix the row")
        split = (raw.get("split") or "").strip().lower() or None
        if split not in (None, "train", "test"):
            raise IngestError(f"{path}:{line_no}: split must be train or test, not {split!r}")
        where = f"{path.name}:{line_no}"
        lesion = _lesion(value, layout, label_map)
        if lesion is None:
            unknown.setdefault(image_id, f"{where}: lesion type {value!r} is not a "
                               "VinDr-SpineXR class; add it to the site's label-map.csv "
                               "to use it")
            by_image.setdefault(image_id, [])
            continue
        by_image.setdefault(image_id, []).append(LabelRow(
            image_id=image_id, lesion=lesion,
            bbox=_bbox(raw, where, sheet.notes) if lesion != NORMAL else None,
            patient_id=(raw.get("patient_id") or "").strip() or None,
            split=split, line=line_no))
    for image_id, reason in unknown.items():
        if by_image[image_id]:
            sheet.notes.append(reason.replace("to use it", "to use it; row ignored, the image "
                                              "keeps its other rows"))
        else:
            sheet.rejected[image_id] = reason
    _combine(sheet, by_image)
    if not sheet.rows and not sheet.rejected:
        raise IngestError(f"{path}: label sheet has a header but no rows")
    return sheet


def _combine(sheet: LabelSheet, by_image: dict[str, list[LabelRow]]) -> None:
    """One row per image: the multi-lesion policy of the module docstring."""
    images_with: dict[str, int] = {}
    for rows in by_image.values():
        for lesion in {r.lesion for r in rows}:
            images_with[lesion] = images_with.get(lesion, 0) + 1

    def rank(lesion: str) -> tuple[int, int, str]:
        vid = LESION_CLASSES.index(lesion) if lesion in LESION_CLASSES else len(LESION_CLASSES)
        return images_with[lesion], vid, lesion

    for image_id, rows in by_image.items():
        if not rows:
            continue
        kinds = sorted({r.lesion for r in rows} - {NORMAL}, key=rank)
        if not kinds:
            sheet.rows[image_id] = rows[0]
            continue
        kept = [r for r in rows if r.lesion == kinds[0]]
        box = next((r.bbox for r in kept if r.bbox is not None), None)
        first = kept[0]
        sheet.rows[image_id] = LabelRow(image_id, first.lesion, box, first.patient_id,
                                        first.split, first.line)
        if len(kinds) > 1:
            lines = ", ".join(f"{r.line} ({r.lesion})" for r in rows if r.lesion != NORMAL)
            sheet.notes.append(
                f"{sheet.path.name}: image {image_id} has several lesion types (rows {lines}); "
                f"kept {kinds[0]!r}, the rarest in this sheet (one class per image)")


def _decode(data: bytes) -> str:
    """UTF-16 with a byte-order mark, else UTF-8 (BOM or not), else Windows-1252 (module
    docstring)."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252")


def match_keys(rel_path: str, sop_uid: str | None = None) -> list[str | None]:
    """The keys tried, in order, to find a file's row (see module docstring)."""
    p = Path(rel_path)
    no_suffix = str(p.with_suffix("")) if p.suffix else str(p)
    return [p.as_posix(), Path(no_suffix).as_posix(), p.name, p.stem, sop_uid]
