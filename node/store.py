"""The site store: every real image a node has accepted, normalised, labelled and split.

Every later command (baseline, train, audit) and researchers' notebooks read real data
through :class:`SiteStore`; only ingestion writes through :class:`StoreWriter`.

Layout of a site directory (nothing in it may hold PHI; the salt is a local secret)::

    SITE/
      site.json               format version and image size
      salt                    random key for patient pseudonyms (mode 0600, never exported)
      store/catalog.sqlite    one row per accepted image, skipped source, and processed source
      store/shards/NNNNNN.npy uint8 arrays (n, size, size), memory-mappable

Why shards plus SQLite: a shard is written whole and renamed into place *before* the catalog
rows that point at it are committed in one transaction. A killed run therefore leaves at
worst an orphan shard (deleted on the next open for writing), never a row without pixels,
and the next run skips every source already in the catalog.

Reading:

>>> import tempfile, numpy as np
>>> site = Path(tempfile.mkdtemp())
>>> with StoreWriter(site, size=8) as w:
...     w.add_batch([Accepted("img-1", np.zeros((8, 8), np.uint8), "No finding", "src-1",
...                           patient_id="P1")])
>>> store = SiteStore.open(site)
>>> [(s.image_id, s.array.shape, s.label, s.lesion) for s in store.samples()]
[('img-1', (8, 8), 0, 'No finding')]
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from node.errors import StoreError
from shared.files import atomic_write_bytes
from shared.vocabulary import BINARY_CLASSES, LESION_CLASSES, NORMAL, binary_label

FORMAT_VERSION = 1

Split = Literal["train", "test"]
ClassMode = Literal["binary", "lesion"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    image_id    TEXT PRIMARY KEY,
    shard       INTEGER NOT NULL,
    row         INTEGER NOT NULL,
    label       INTEGER NOT NULL,      -- 0 normal, 1 abnormal
    lesion      TEXT NOT NULL,         -- class name for multi-class runs
    split       TEXT NOT NULL CHECK (split IN ('train', 'test')),
    patient_key TEXT NOT NULL,         -- HMAC-SHA256(salt, PatientID), hex
    source_key  TEXT NOT NULL,         -- local provenance (relative path); stays on site
    bbox        TEXT                   -- JSON [x0, y0, x1, y1] in store pixels, or NULL
);
CREATE TABLE IF NOT EXISTS skipped (
    source_key  TEXT PRIMARY KEY,
    reason      TEXT NOT NULL,         -- short category, e.g. 'not-dicom'
    detail      TEXT NOT NULL          -- one line for the admin
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    instance_key TEXT PRIMARY KEY,     -- HMAC-SHA256(salt, 'sop:' + SOP Instance UID), hex
    image_id     TEXT NOT NULL         -- the accepted image holding that DICOM instance
);
CREATE TABLE IF NOT EXISTS unindexed (
    source_key TEXT PRIMARY KEY,       -- a source stored before instances were kept, whose
    image_id   TEXT NOT NULL           -- file was not there to re-read; retried every run
);
"""

_INDEXED = "instances_indexed"
"""meta key: every accepted DICOM source's SOP Instance UID is in ``instances``, except the
sources listed in ``unindexed`` (their files were gone when re-read). Stores made before that
table existed lack it until ``node preprocess`` re-reads their headers."""
_STORED_TWICE = "instances_stored_twice"
"""meta key: JSON list of [image id, image id] pairs found, when indexing, to be one DICOM
instance stored twice (both may sit in the split); every later run repeats them."""


@dataclass(frozen=True)
class Accepted:
    """One image ready for the store: pixels already normalised to uint8 at store size."""

    image_id: str
    pixels: npt.NDArray[np.uint8]
    lesion: str
    source_key: str
    patient_id: str | None = None
    """Raw PatientID, hashed with the site salt before it touches disk; None → own patient."""
    split: Split | None = None
    """Force a split (research importers with predefined splits); None → patient hash."""
    bbox: tuple[float, float, float, float] | None = None
    note: str | None = None
    """One line for the admin about a row the image was accepted despite (e.g. its box was
    dropped); printed and kept in the import report, not stored."""
    instance_uid: str | None = None
    """SOP Instance UID of a DICOM source (None for other sources). Only its salted hash
    touches disk (:meth:`StoreWriter.instance_key`): one DICOM instance is stored once, however
    many files and label rows carry it, so no copy can sit on both sides of the split."""


@dataclass(frozen=True)
class Skipped:
    """A source that was not accepted, with a short reason category and a one-line detail."""

    source_key: str
    reason: str
    detail: str


@dataclass(frozen=True)
class Sample:
    """What :meth:`SiteStore.samples` yields."""

    image_id: str
    array: npt.NDArray[np.uint8]
    label: int
    lesion: str
    split: Split
    bbox: tuple[float, float, float, float] | None = None


def patient_split(patient_key: str, test_fraction: float) -> Split:
    """Deterministic, order-independent split: the same patient always lands on one side."""
    h = int(hashlib.sha256(("split:" + patient_key).encode()).hexdigest()[:12], 16)
    return "test" if h / float(1 << 48) < test_fraction else "train"


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=30)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.executescript(_SCHEMA)
    return con


class StoreWriter:
    """Appends batches to a site store; the only writer (one process at a time)."""

    def __init__(self, site_dir: Path, size: int, test_fraction: float = 0.2) -> None:
        if size < 8:
            raise StoreError(f"{site_dir}: image size {size} is too small (need ≥ 8)")
        if not 0.0 <= test_fraction < 1.0:
            raise StoreError(f"test fraction must be in [0, 1), got {test_fraction}")
        self.site_dir = Path(site_dir)
        self.size = size
        self.test_fraction = test_fraction
        self.site_dir.mkdir(parents=True, exist_ok=True)
        self._shards = self.site_dir / "store" / "shards"
        self._shards.mkdir(parents=True, exist_ok=True)
        site_json = self.site_dir / "site.json"
        if site_json.exists():
            meta = json.loads(site_json.read_text())
            if meta.get("format") != FORMAT_VERSION:
                raise StoreError(f"{site_json}: unsupported store format {meta.get('format')!r}")
            if meta["size"] != size:
                raise StoreError(
                    f"{site_json}: this store holds {meta['size']}² images, but {size}² was "
                    "requested; use the same --size or a new --site-dir"
                )
            if abs(meta["test_fraction"] - test_fraction) > 1e-9:
                raise StoreError(
                    f"{site_json}: this store was split with test fraction "
                    f"{meta['test_fraction']}, not {test_fraction}; changing it would move "
                    "patients between splits. Use the original value or a new --site-dir"
                )
        else:
            body = {"format": FORMAT_VERSION, "size": size, "test_fraction": test_fraction}
            atomic_write_bytes(site_json, (json.dumps(body, indent=2) + "\n").encode())
        self._salt = self._load_salt()
        self._con = _connect(self.site_dir / "store" / "catalog.sqlite")
        self._drop_orphans()
        if self._con.execute("SELECT 1 FROM images LIMIT 1").fetchone() is None:
            self.mark_instances_indexed()  # nothing stored yet: nothing to re-read

    def _load_salt(self) -> bytes:
        path = self.site_dir / "salt"
        if not path.exists():
            atomic_write_bytes(path, secrets.token_hex(32).encode())
            os.chmod(path, 0o600)
        return path.read_bytes().strip()

    def _drop_orphans(self) -> None:
        used = {r[0] for r in self._con.execute("SELECT DISTINCT shard FROM images")}
        for f in self._shards.glob("*.npy"):
            if int(f.stem) not in used:
                f.unlink()
        for f in self._shards.glob(".*.tmp"):
            f.unlink()

    def patient_key(self, patient_id: str | None, source_key: str) -> str:
        raw = patient_id.strip() if patient_id and patient_id.strip() else f"file:{source_key}"
        return hmac.new(self._salt, raw.encode("utf-8"), hashlib.sha256).hexdigest()

    def known_sources(self) -> set[str]:
        """Sources already accepted or skipped: an incremental run leaves them alone."""
        a = {r[0] for r in self._con.execute("SELECT source_key FROM images")}
        s = {r[0] for r in self._con.execute("SELECT source_key FROM skipped")}
        return a | s

    def known_image_ids(self) -> set[str]:
        return {r[0] for r in self._con.execute("SELECT image_id FROM images")}

    def instance_key(self, instance_uid: str) -> str:
        """Salted hash of a SOP Instance UID (UIDs can name the hospital and the date)."""
        raw = "sop:" + instance_uid.strip()
        return hmac.new(self._salt, raw.encode("utf-8"), hashlib.sha256).hexdigest()

    def known_instances(self) -> dict[str, str]:
        """Instance key → image id, for every stored DICOM instance."""
        return dict(self._con.execute("SELECT instance_key, image_id FROM instances"))

    def instances_indexed(self) -> bool:
        row = self._con.execute("SELECT value FROM meta WHERE key = ?", (_INDEXED,)).fetchone()
        return row is not None

    def mark_instances_indexed(self) -> None:
        with self._con:
            self._con.execute("INSERT OR REPLACE INTO meta VALUES (?, '1')", (_INDEXED,))

    def accepted_sources(self) -> dict[str, str]:
        """Source key → image id of every accepted image."""
        return dict(self._con.execute("SELECT source_key, image_id FROM images"))

    def unindexed_sources(self) -> dict[str, str]:
        """Source key → image id of stored sources whose instance is not known yet."""
        return dict(self._con.execute("SELECT source_key, image_id FROM unindexed"))

    def stored_twice(self) -> list[tuple[str, str]]:
        row = self._con.execute("SELECT value FROM meta WHERE key = ?",
                                (_STORED_TWICE,)).fetchone()
        return [(a, b) for a, b in json.loads(row[0])] if row else []

    def record_index(self, pairs: Sequence[tuple[str, str]], missing: dict[str, str],
                     twice: Sequence[tuple[str, str]]) -> None:
        """One indexing pass, atomically: (SOP Instance UID, image id) pairs of stored images,
        the sources whose files were not there (replacing the previous list), the pairs of
        image ids found to be one instance; then the store counts as indexed."""
        with self._con:
            self._con.executemany("INSERT OR IGNORE INTO instances VALUES (?,?)",
                                  [(self.instance_key(u), i) for u, i in pairs if u.strip()])
            self._con.execute("DELETE FROM unindexed")
            self._con.executemany("INSERT INTO unindexed VALUES (?,?)", sorted(missing.items()))
            known = self.stored_twice()
            both = [*known, *(p for p in twice if p not in known)]
            if both:
                self._con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                  (_STORED_TWICE, json.dumps([list(p) for p in both])))
            self._con.execute("INSERT OR REPLACE INTO meta VALUES (?, '1')", (_INDEXED,))

    def add_batch(self, accepted: Sequence[Accepted], skipped: Sequence[Skipped] = ()) -> None:
        """Write one shard (if any accepted) and its catalog rows, atomically."""
        rows = []
        if accepted:
            arr = np.stack([a.pixels for a in accepted])
            if arr.dtype != np.uint8 or arr.shape[1:] != (self.size, self.size):
                raise StoreError(
                    f"batch has {arr.dtype} {arr.shape[1:]}, store needs uint8 "
                    f"({self.size}, {self.size})"
                )
            shard = self._next_shard()
            path = self._shards / f"{shard:06d}.npy"
            import io

            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            atomic_write_bytes(path, buf.getvalue())
            for i, a in enumerate(accepted):
                key = self.patient_key(a.patient_id, a.source_key)
                split = a.split or patient_split(key, self.test_fraction)
                bbox = json.dumps(list(a.bbox)) if a.bbox is not None else None
                rows.append(
                    (a.image_id, shard, i, binary_label(a.lesion), a.lesion, split, key,
                     a.source_key, bbox)
                )
        with self._con:
            self._con.executemany(
                "INSERT OR REPLACE INTO images VALUES (?,?,?,?,?,?,?,?,?)", rows
            )
            self._con.executemany(
                "INSERT OR IGNORE INTO instances VALUES (?,?)",
                [(self.instance_key(a.instance_uid), a.image_id) for a in accepted
                 if a.instance_uid and a.instance_uid.strip()],
            )
            self._con.executemany(
                "INSERT OR REPLACE INTO skipped VALUES (?,?,?)",
                [(s.source_key, s.reason, s.detail) for s in skipped],
            )

    def forget_skipped(self, reason: str) -> int:
        """Let sources skipped for ``reason`` be retried (e.g. after labels were added)."""
        with self._con:
            cur = self._con.execute("DELETE FROM skipped WHERE reason = ?", (reason,))
        return cur.rowcount

    def _next_shard(self) -> int:
        existing = [int(f.stem) for f in self._shards.glob("*.npy")]
        return max(existing, default=-1) + 1

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class SiteStore:
    """Read-only view of a site store. Arrays are memory-mapped: opening is cheap."""

    site_dir: Path
    size: int
    _rows: list[tuple[str, int, int, int, str, str, str | None]] = field(repr=False)
    _skipped: list[tuple[str, str, str]] = field(repr=False)
    _maps: dict[int, npt.NDArray[np.uint8]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, site_dir: Path) -> SiteStore:
        site_dir = Path(site_dir)
        site_json = site_dir / "site.json"
        catalog = site_dir / "store" / "catalog.sqlite"
        if not site_json.exists() or not catalog.exists():
            raise StoreError(
                f"{site_dir}: no site store here. Create one with `synthlearn node preprocess "
                f"DICOM_DIR --labels labels.csv --site-dir {site_dir}` or `node import-npz`"
            )
        meta = json.loads(site_json.read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise StoreError(f"{site_json}: unsupported store format {meta.get('format')!r}")
        con = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)
        try:
            rows = list(
                con.execute(
                    "SELECT image_id, shard, row, label, lesion, split, bbox FROM images "
                    "ORDER BY image_id"
                )
            )
            skipped = list(con.execute("SELECT source_key, reason, detail FROM skipped"))
        finally:
            con.close()
        return cls(site_dir=site_dir, size=int(meta["size"]), _rows=rows, _skipped=skipped)

    def __len__(self) -> int:
        return len(self._rows)

    def _shard(self, shard: int) -> npt.NDArray[np.uint8]:
        if shard not in self._maps:
            path = self.site_dir / "store" / "shards" / f"{shard:06d}.npy"
            try:
                self._maps[shard] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise StoreError(f"{path}: unreadable shard ({exc}); re-run preprocess") from exc
        return self._maps[shard]

    def lesion_classes(self) -> list[str]:
        """Class names for multi-class runs (:mod:`shared.vocabulary`): the whole vocabulary
        in id order when every stored name is a vocabulary name, whether or not this site has
        each class; else the site-defined list, 'No finding' first (index 0), others sorted."""
        names = {r[4] for r in self._rows}
        if names <= set(LESION_CLASSES):
            return list(LESION_CLASSES)
        rest = sorted(names - {NORMAL})
        return ([NORMAL] if NORMAL in names else []) + rest

    def class_names(self, mode: ClassMode) -> list[str]:
        return list(BINARY_CLASSES) if mode == "binary" else self.lesion_classes()

    def samples(self, split: Split | None = None) -> Iterator[Sample]:
        """Yield every image (optionally one split) in image-id order."""
        for image_id, shard, row, label, lesion, sp, bbox in self._rows:
            if split is not None and sp != split:
                continue
            box = tuple(json.loads(bbox)) if bbox else None
            yield Sample(
                image_id, np.asarray(self._shard(shard)[row]), label, lesion, sp,  # type: ignore[arg-type]
                box,
            )

    def load(
        self, split: Split | None = None, classes: ClassMode = "binary"
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        """All images of a split as (N, size, size) uint8 and int64 labels (binary or lesion)."""
        names = self.lesion_classes()
        index = {n: i for i, n in enumerate(names)}
        sel = [r for r in self._rows if split is None or r[5] == split]
        images = np.empty((len(sel), self.size, self.size), dtype=np.uint8)
        labels = np.empty(len(sel), dtype=np.int64)
        for i, (_, shard, row, label, lesion, _, _) in enumerate(sel):
            images[i] = self._shard(shard)[row]
            labels[i] = label if classes == "binary" else index[lesion]
        return images, labels

    def summary(self) -> dict[str, object]:
        """Counts per class and split, size and skip reasons: what `node inspect` prints."""
        per: dict[str, dict[str, int]] = {}
        for r in self._rows:
            per.setdefault(r[4], {"train": 0, "test": 0})[r[5]] += 1
        reasons: dict[str, int] = {}
        for _, reason, _ in self._skipped:
            reasons[reason] = reasons.get(reason, 0) + 1
        return {
            "size": self.size,
            "images": len(self._rows),
            "train": sum(1 for r in self._rows if r[5] == "train"),
            "test": sum(1 for r in self._rows if r[5] == "test"),
            "per_class": dict(sorted(per.items())),
            "skipped": len(self._skipped),
            "skip_reasons": dict(sorted(reasons.items())),
        }

    def skipped(self) -> list[Skipped]:
        return [Skipped(*s) for s in self._skipped]

    def __iter__(self) -> Iterator[Sample]:
        """``for sample in store`` is ``store.samples()``: every image in image-id order."""
        return self.samples()

    def provenance(self) -> dict[str, str]:
        """The local provenance map: image id → source (path relative to the DICOM folder,
        or an importer key). It names real files, so it never leaves the site."""
        catalog = self.site_dir / "store" / "catalog.sqlite"
        con = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)
        try:
            return dict(con.execute("SELECT image_id, source_key FROM images ORDER BY image_id"))
        finally:
            con.close()

    def report(self) -> dict[str, object] | None:
        """The last preprocessing/import report (``store/preprocess-report.json``), if any."""
        path = self.site_dir / "store" / "preprocess-report.json"
        if not path.exists():
            return None
        data: dict[str, object] = json.loads(path.read_text())
        return data
