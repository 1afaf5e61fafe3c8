"""Label sheets: which lesion each image shows. Never guessed: no row, no image.

Two layouts are accepted (header row required, extra columns ignored):

* **VinDr style** ``image_id,lesion_type`` (as in VinDr-SpineXR's annotation files), optionally
  with ``xmin,ymin,xmax,ymax`` in source pixels. An image may have several rows (one per
  lesion). ``No finding`` means normal; any other lesion type means abnormal. When an image has
  rows of several kinds, the first lesion row (file order) names its class and gives its box;
  ``No finding`` only wins when it is the image's only kind of row.
* **Generic** ``image_id,label``: ``0``/``normal``/``No finding`` → "No finding";
  ``1``/``abnormal`` → "Abnormal"; any other text is taken as the lesion name (abnormal).

The sheet as spreadsheets save it is read too: UTF-8 with or without a byte-order mark,
UTF-16 with one (Excel's "Unicode text"), else Windows-1252 (Excel's "CSV" on Western
European Windows); comma, semicolon (locales with a decimal comma) or tab separators, taken
from the header line; CRLF or CR line ends; header names in any case; spaces around cells;
rows whose cells are all empty are ignored. In both layouts the rows of one image id combine
as above (a lesion row wins over a normal one), whatever their order.

An optional ``patient_id`` column overrides the DICOM PatientID (research importers), and an
optional ``split`` column (``train``/``test``) forces the split.

Matching a file to a row (first hit wins): the path relative to the DICOM folder (with and
without its suffix), the file name, the file stem, then the SOP Instance UID.

>>> import tempfile
>>> p = Path(tempfile.mkdtemp()) / "labels.csv"
>>> _ = p.write_text("image_id,lesion_type\\nimg1,No finding\\nimg2,Osteophytes\\n"
...                  "img2,No finding\\n")
>>> sheet = load_labels(p)
>>> sheet.lookup(["img2"]).lesion, sheet.lookup(["nope"])
('Osteophytes', None)
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from node.errors import IngestError
from node.store import NORMAL

ABNORMAL = "Abnormal"
_NORMAL_WORDS = {"0", "normal", "no finding", "no_finding", "negative"}
_ABNORMAL_WORDS = {"1", "abnormal", "positive"}


@dataclass(frozen=True)
class LabelRow:
    image_id: str
    lesion: str
    bbox: tuple[float, float, float, float] | None = None
    patient_id: str | None = None
    split: str | None = None


@dataclass
class LabelSheet:
    path: Path
    layout: str
    rows: dict[str, LabelRow] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def lookup(self, keys: Iterable[str | None]) -> LabelRow | None:
        for key in keys:
            if key and key in self.rows:
                return self.rows[key]
        return None

    def classes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.rows.values():
            counts[r.lesion] = counts.get(r.lesion, 0) + 1
        return dict(sorted(counts.items()))


def _generic(label: str) -> str:
    low = label.strip().lower()
    if low in _NORMAL_WORDS:
        return NORMAL
    if low in _ABNORMAL_WORDS:
        return ABNORMAL
    return label.strip()


def _bbox(row: dict[str, str]) -> tuple[float, float, float, float] | None:
    try:
        vals = [float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
    except (KeyError, TypeError, ValueError):
        return None
    return (vals[0], vals[1], vals[2], vals[3])


def load_labels(path: Path) -> LabelSheet:
    """Read a VinDr-style or generic label sheet; raise IngestError when it is unusable."""
    path = Path(path)
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
    for line_no, raw in enumerate(reader, start=2):
        if not any((v or "").strip() for v in raw.values() if isinstance(v, str)):
            continue  # a row of empty cells (spreadsheets leave them at the end)
        image_id = (raw.get("image_id") or "").strip()
        value = (raw.get(column) or "").strip()
        if not image_id or not value:
            raise IngestError(f"{path}:{line_no}: empty image_id or {column}; fix the row")
        lesion = value if layout == "vindr" else _generic(value)
        if layout == "vindr" and lesion.lower() in ("no finding", "no_finding"):
            lesion = NORMAL
        split = (raw.get("split") or "").strip().lower() or None
        if split not in (None, "train", "test"):
            raise IngestError(f"{path}:{line_no}: split must be train or test, not {split!r}")
        row = LabelRow(
            image_id=image_id,
            lesion=lesion,
            bbox=_bbox(raw) if lesion != NORMAL else None,
            patient_id=(raw.get("patient_id") or "").strip() or None,
            split=split,
        )
        prev = sheet.rows.get(image_id)
        if prev is None or (prev.lesion == NORMAL and lesion != NORMAL):
            sheet.rows[image_id] = row
    if not sheet.rows:
        raise IngestError(f"{path}: label sheet has a header but no rows")
    return sheet


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
