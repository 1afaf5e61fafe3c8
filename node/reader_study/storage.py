"""Studies, readers and answers in SQLite: ``SITE/reader_study/studies.sqlite``.

Why SQLite in the site directory: answers are the study's only irreplaceable data. Each answer
is committed before the page moves on (WAL, ``synchronous=FULL``), so closing the browser or
stopping the server loses nothing, and every request opens its own connection, so readers at
several browsers answer at once without sharing state in memory. A reader answers each image
once: ``answers`` has the primary key (study, reader, item), so a double-submitted answer is
stored once; the same answer again is acknowledged, a different one is refused.

The database holds reader names and per-image answers: it stays on the site. Only
:func:`node.reader_study.statistics.summary` (numbers, no names) may leave.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from node.errors import ReaderStudyError
from node.reader_study.statistics import Answer
from node.reader_study.study import Item

DB_NAME = "studies.sqlite"
CALLS = ("real", "synthetic")
_READER_RE = re.compile(r"^[^\W_][\w .'-]{0,63}$")
_STUDY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    name             TEXT PRIMARY KEY,
    created_at       TEXT NOT NULL,
    synthetic_name   TEXT NOT NULL,
    synthetic_sha256 TEXT NOT NULL,
    size             INTEGER NOT NULL,
    class_names      TEXT NOT NULL,        -- JSON list
    seed             INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    study      TEXT NOT NULL REFERENCES studies(name),
    item_no    INTEGER NOT NULL,
    truth      TEXT NOT NULL CHECK (truth IN ('real', 'synthetic')),
    ref        TEXT NOT NULL,              -- real image id or synthetic index; never served
    class_name TEXT NOT NULL,
    PRIMARY KEY (study, item_no)
);
CREATE TABLE IF NOT EXISTS readers (
    study      TEXT NOT NULL REFERENCES studies(name),
    name       TEXT NOT NULL,
    ordinal    INTEGER NOT NULL,           -- order the admin named them: reader-1, reader-2 …
    created_at TEXT NOT NULL,
    PRIMARY KEY (study, name)
);
CREATE TABLE IF NOT EXISTS orders (
    study    TEXT NOT NULL,
    reader   TEXT NOT NULL,
    position INTEGER NOT NULL,
    item_no  INTEGER NOT NULL,
    PRIMARY KEY (study, reader, position),
    UNIQUE (study, reader, item_no)
);
CREATE TABLE IF NOT EXISTS answers (
    study       TEXT NOT NULL,
    reader      TEXT NOT NULL,
    item_no     INTEGER NOT NULL,
    call        TEXT NOT NULL CHECK (call IN ('real', 'synthetic')),
    class_call  TEXT,
    confidence  INTEGER CHECK (confidence BETWEEN 1 AND 5),
    answered_at TEXT NOT NULL,
    PRIMARY KEY (study, reader, item_no)
);
"""


class AlreadyAnsweredError(ReaderStudyError):
    """A second, different answer for an image the reader has answered (another window?)."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_reader_name(name: str) -> str:
    """Letters, digits, spaces, ``.``, ``'``, ``_``, ``-``; 1–64 characters. Markup is refused
    here, so a name can never become code in the page (which shows names as text anyway)."""
    clean = name.strip()
    if not _READER_RE.match(clean):
        raise ReaderStudyError(
            f"reader name {name!r} is not allowed: use 1–64 letters, digits, spaces, '.', "
            "\"'\", '_' or '-', starting with a letter or digit (no markup such as < > & \")")
    return clean


def check_study_name(name: str) -> str:
    if not _STUDY_RE.match(name):
        raise ReaderStudyError(f"study name {name!r}: use 1–64 letters, digits, '.', '_' or '-'")
    return name


class StudyDB:
    """Every read and write of the study database; one short connection per call."""

    def __init__(self, site_dir: Path) -> None:
        self.path = Path(site_dir) / "reader_study" / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise ReaderStudyError(f"{self.path}: cannot open the study database ({exc})") \
                from None
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA busy_timeout=30000")
            yield con
        finally:
            con.close()

    # -- studies and readers -------------------------------------------------------------
    def study(self, name: str) -> dict[str, object] | None:
        with self._connect() as con:
            row = con.execute("SELECT created_at, synthetic_name, synthetic_sha256, size, "
                              "class_names, seed FROM studies WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return {"name": name, "created_at": row[0], "synthetic_name": row[1],
                "synthetic_sha256": row[2], "size": row[3], "class_names": json.loads(row[4]),
                "seed": row[5]}

    def create_study(self, name: str, *, synthetic_name: str, synthetic_sha256: str, size: int,
                     class_names: Sequence[str], seed: int, items: Sequence[Item]) -> None:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute("INSERT INTO studies VALUES (?,?,?,?,?,?,?)",
                            (name, _now(), synthetic_name, synthetic_sha256, size,
                             json.dumps(list(class_names)), seed))
                con.executemany("INSERT INTO items VALUES (?,?,?,?,?)",
                                [(name, it.item_no, it.truth, it.ref, it.class_name)
                                 for it in items])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def items(self, study: str) -> dict[int, Item]:
        with self._connect() as con:
            rows = con.execute("SELECT item_no, truth, ref, class_name FROM items WHERE study = ? "
                               "ORDER BY item_no", (study,)).fetchall()
        return {r[0]: Item(r[0], r[1], r[2], r[3]) for r in rows}

    def add_reader(self, study: str, name: str, seed: int) -> bool:
        """Name a reader and fix their own shuffled order; False when already named."""
        name = check_reader_name(name)
        items = sorted(self.items(study))
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                if con.execute("SELECT 1 FROM readers WHERE study = ? AND name = ?",
                               (study, name)).fetchone():
                    con.execute("ROLLBACK")
                    return False
                ordinal = con.execute("SELECT COUNT(*) FROM readers WHERE study = ?",
                                      (study,)).fetchone()[0] + 1
                con.execute("INSERT INTO readers VALUES (?,?,?,?)", (study, name, ordinal, _now()))
                rng = np.random.default_rng([seed, ordinal, 7])
                order = rng.permutation(items).tolist()
                con.executemany("INSERT INTO orders VALUES (?,?,?,?)",
                                [(study, name, pos, int(no)) for pos, no in enumerate(order)])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return True

    def readers(self, study: str) -> list[str]:
        with self._connect() as con:
            return [r[0] for r in con.execute(
                "SELECT name FROM readers WHERE study = ? ORDER BY ordinal", (study,))]

    def require_reader(self, study: str, name: str) -> None:
        if name not in self.readers(study):
            raise ReaderStudyError(
                f"{name!r} is not a reader of study {study!r}; the admin names readers with "
                "`synthlearn node reader-study … --reader NAME`")

    # -- answering -----------------------------------------------------------------------
    def progress(self, study: str, reader: str) -> tuple[int, int, int | None]:
        """(answered, total, first unanswered position or None when finished)."""
        with self._connect() as con:
            total = con.execute("SELECT COUNT(*) FROM orders WHERE study = ? AND reader = ?",
                                (study, reader)).fetchone()[0]
            answered = con.execute("SELECT COUNT(*) FROM answers WHERE study = ? AND reader = ?",
                                   (study, reader)).fetchone()[0]
            row = con.execute(
                "SELECT o.position FROM orders o LEFT JOIN answers a ON a.study = o.study AND "
                "a.reader = o.reader AND a.item_no = o.item_no WHERE o.study = ? AND "
                "o.reader = ? AND a.item_no IS NULL ORDER BY o.position LIMIT 1",
                (study, reader)).fetchone()
        return answered, total, None if row is None else int(row[0])

    def item_at(self, study: str, reader: str, position: int) -> int:
        with self._connect() as con:
            row = con.execute("SELECT item_no FROM orders WHERE study = ? AND reader = ? AND "
                              "position = ?", (study, reader, position)).fetchone()
        if row is None:
            raise ReaderStudyError(f"image {position} is not part of {reader!r}'s study")
        return int(row[0])

    def record(self, study: str, reader: str, position: int, call: str,
               class_call: str | None, confidence: int | None,
               class_names: Sequence[str]) -> bool:
        """Store one answer; True if stored now, False if this exact answer was already there.

        Raises :class:`AlreadyAnsweredError` for a different second answer: the first one counts.
        """
        if call not in CALLS:
            raise ReaderStudyError(f"answer must be 'real' or 'synthetic', not {call!r}")
        if class_call is not None and class_call not in class_names:
            raise ReaderStudyError(f"class {class_call!r} is not one of {list(class_names)}")
        if confidence is not None and not 1 <= confidence <= 5:
            raise ReaderStudyError(f"confidence must be 1–5, not {confidence}")
        item_no = self.item_at(study, reader, position)
        with self._connect() as con:
            cur = con.execute(
                "INSERT INTO answers VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                (study, reader, item_no, call, class_call, confidence, _now()))
            if cur.rowcount == 1:
                return True
            old = con.execute("SELECT call, class_call, confidence FROM answers WHERE study = ? "
                              "AND reader = ? AND item_no = ?",
                              (study, reader, item_no)).fetchone()
        if tuple(old) == (call, class_call, confidence):
            return False
        raise AlreadyAnsweredError(
            f"image {position + 1} was already answered ({old[0]}), perhaps in another window; "
            "the first answer counts")

    def answers(self, study: str, reader: str) -> list[Answer]:
        with self._connect() as con:
            rows = con.execute(
                "SELECT i.truth, a.call, i.class_name, a.class_call, a.confidence, a.item_no "
                "FROM answers a "
                "JOIN items i ON i.study = a.study AND i.item_no = a.item_no "
                "WHERE a.study = ? AND a.reader = ? ORDER BY a.item_no", (study, reader))
            return [Answer(*r) for r in rows]

    def answer_rows(self, study: str) -> list[dict[str, object]]:
        """Every stored answer with its position (for the admin's export and the tests)."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT a.reader, o.position, i.truth, a.call, a.class_call, a.confidence "
                "FROM answers a JOIN orders o ON o.study = a.study AND o.reader = a.reader AND "
                "o.item_no = a.item_no JOIN items i ON i.study = a.study AND "
                "i.item_no = a.item_no WHERE a.study = ? ORDER BY a.reader, o.position",
                (study,)).fetchall()
        keys = ("reader", "position", "truth", "call", "class_call", "confidence")
        return [dict(zip(keys, r, strict=True)) for r in rows]
