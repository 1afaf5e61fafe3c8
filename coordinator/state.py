"""The coordinator's memory: one SQLite file (the embedded default; no server to run).

What it keeps and why:

* **sites** and the key each one signs with — so a report can say which key vouched for which
  number, and a site that changes key is visible;
* **bundles**: every bundle ever seen, with its id, SHA-256, verdict and reason — a bundle id
  already pooled is a replay and is refused, however it arrives;
* **phases** of each run with their results — a coordinator restarted mid-run reads them back
  and continues from the last completed phase instead of asking hospitals to train again;
* **site_status** per run (ok / dropped / excluded / refused, with the reason) and the
  **evaluations** received (signed records, verbatim).

Writes are single statements in autocommit-style transactions, so a crash never leaves a
half-recorded phase: a phase is either finished (with its result) or it is re-run.

>>> import tempfile
>>> st = CoordinatorState(Path(tempfile.mkdtemp()) / "state.db")
>>> st.finish_phase("r1", "bundles", {"sites": 3}); st.phase_result("r1", "bundles")
{'sites': 3}
>>> st.completed_phases("r1")
['bundles']
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coordinator.errors import KeyChangedError, StateError

SCHEMA_VERSION = 1
PHASES = ("bundles", "pool", "round2", "train", "evaluate", "report")
"""Run phases, in order (DESIGN §1). ``round2`` does nothing unless the run asks for two
rounds (``RunSettings.rounds``)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sites (
    name TEXT PRIMARY KEY, key_fingerprint TEXT, key_file TEXT,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS bundles (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run TEXT NOT NULL, bundle_id TEXT, sha256 TEXT,
    site TEXT, path TEXT, verdict TEXT NOT NULL, reason TEXT, message TEXT,
    images INTEGER, seen_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS bundles_by_id ON bundles (bundle_id);
CREATE TABLE IF NOT EXISTS phases (
    run TEXT NOT NULL, phase TEXT NOT NULL, status TEXT NOT NULL, started_at REAL,
    finished_at REAL, result TEXT, PRIMARY KEY (run, phase));
CREATE TABLE IF NOT EXISTS site_status (
    run TEXT NOT NULL, site TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
    updated_at REAL NOT NULL, PRIMARY KEY (run, site));
CREATE TABLE IF NOT EXISTS evaluations (
    run TEXT NOT NULL, site TEXT NOT NULL, role TEXT NOT NULL, record TEXT NOT NULL,
    received_at REAL NOT NULL, PRIMARY KEY (run, site, role));
"""

SITE_STATUSES = ("ok", "dropped", "excluded", "refused", "failed")


class _Guarded:
    """The SQLite connection, with every database error turned into one :class:`StateError`
    line naming the file: corruption found mid-run (a disk error, a file overwritten while
    the coordinator runs) must not surface as a traceback."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db, self._path = db, path

    def _wrap(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self._path}: the coordinator state database failed ({exc}); "
                             "restore it from a backup or move it aside to start a fresh "
                             "state") from None

    def execute(self, *args: Any) -> Any:
        return self._wrap(self._db.execute, *args)

    def executemany(self, *args: Any) -> Any:
        return self._wrap(self._db.executemany, *args)

    def executescript(self, *args: Any) -> Any:
        return self._wrap(self._db.executescript, *args)

    def close(self) -> None:
        self._db.close()


class CoordinatorState:
    """Typed access to the coordinator's SQLite file (created on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db: Any = _Guarded(sqlite3.connect(self.path, timeout=30,
                                                     isolation_level=None), self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.DatabaseError, StateError) as exc:
            raise StateError(f"{self.path}: not a usable coordinator state file ({exc}); "
                             "move it aside to start a fresh state") from None
        row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise StateError(f"{self.path}: state schema {row[0]} is not {SCHEMA_VERSION}; "
                             "use the synthlearn version that wrote it")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- sites ---------------------------------------------------------------------------------
    def upsert_site(self, name: str, key_fingerprint: str | None = None,
                    key_file: str | None = None) -> None:
        """Remember a site and its key. A known site signing with another key stops the run
        (:class:`KeyChangedError`): either its admin rotated the key, or someone else holds
        a key under its name; a person must tell which (:meth:`forget_site_key`)."""
        now = time.time()
        row = self._db.execute("SELECT key_fingerprint, first_seen FROM sites WHERE name=?",
                               (name,)).fetchone()
        if row is not None and row[0] and key_fingerprint and row[0] != key_fingerprint:
            raise KeyChangedError(
                f"site {name!r} now signs with key {key_fingerprint}, but this coordinator "
                f"knows it by key {row[0]} (since "
                f"{time.strftime('%Y-%m-%d', time.gmtime(row[1]))}); the run stops. If its "
                "admin rotated the key, confirm the new fingerprint with them by phone, then "
                f"run `synthlearn coordinator forget-key {name} --work WORK`; otherwise treat "
                "it as an impostor and remove the key from the trust folder")
        with self._tx() as db:
            db.execute(
                "INSERT INTO sites (name, key_fingerprint, key_file, first_seen, last_seen) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET last_seen=excluded."
                "last_seen, key_fingerprint=COALESCE(excluded.key_fingerprint, key_fingerprint),"
                " key_file=COALESCE(excluded.key_file, key_file)",
                (name, key_fingerprint, key_file, now, now))

    def forget_site_key(self, name: str) -> bool:
        """Forget the key recorded for ``name`` (after a confirmed key rotation)."""
        with self._tx() as db:
            cur = db.execute("UPDATE sites SET key_fingerprint=NULL, key_file=NULL WHERE name=?",
                             (name,))
        return bool(cur.rowcount)

    def sites(self) -> list[dict[str, Any]]:
        cur = self._db.execute("SELECT name, key_fingerprint, key_file FROM sites ORDER BY name")
        return [{"name": n, "key_fingerprint": f, "key_file": k} for n, f, k in cur]

    # -- bundles -------------------------------------------------------------------------------
    def record_bundle(self, run: str, *, verdict: str, bundle_id: str | None, sha256: str | None,
                      site: str | None, path: str | None, reason: str | None = None,
                      message: str | None = None, images: int | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO bundles (run, bundle_id, sha256, site, path, verdict, reason, "
                "message, images, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run, bundle_id, sha256, site, path, verdict, reason, message, images,
                 time.time()))

    def pooled_ids(self, exclude_run: str | None = None) -> set[str]:
        """Bundle ids pooled by any run (optionally not counting ``exclude_run``); a round-1
        bundle replaced by its site's round-2 bundle (``superseded``) counts: it was pooled."""
        cur = self._db.execute(
            "SELECT DISTINCT bundle_id FROM bundles WHERE verdict IN ('pooled', 'superseded') "
            "AND bundle_id IS NOT NULL AND run IS NOT ?", (exclude_run,))
        return {r[0] for r in cur}

    def bundles(self, run: str | None = None) -> list[dict[str, Any]]:
        sql = ("SELECT run, bundle_id, sha256, site, path, verdict, reason, message, images "
               "FROM bundles")
        args: tuple[Any, ...] = ()
        if run is not None:
            sql += " WHERE run = ?"
            args = (run,)
        cols = ("run", "bundle_id", "sha256", "site", "path", "verdict", "reason", "message",
                "images")
        return [dict(zip(cols, row, strict=True))
                for row in self._db.execute(sql + " ORDER BY id", args)]

    def clear_run_bundles(self, run: str) -> None:
        """Forget one run's verdicts before re-pooling it (its pooled ids are not replays).

        A run whose pool was already used (its ``train`` phase finished) is closed: pooling
        again under the same name (``--run-name files``, the default ``run``) is a *later*
        run, so the earlier verdicts are archived under ``NAME@time`` instead of forgotten,
        and every bundle id they pooled is refused as a replay."""
        closed = "train" in self.completed_phases(run)
        with self._tx() as db:
            if closed:
                db.execute("UPDATE bundles SET run = run || '@' || CAST(seen_at AS TEXT) "
                           "WHERE run = ?", (run,))
            else:
                db.execute("DELETE FROM bundles WHERE run = ?", (run,))

    # -- phases --------------------------------------------------------------------------------
    def start_phase(self, run: str, phase: str) -> None:
        self._check_phase(phase)
        with self._tx() as db:
            db.execute(
                "INSERT INTO phases (run, phase, status, started_at) VALUES (?, ?, 'running', ?)"
                " ON CONFLICT(run, phase) DO UPDATE SET status='running', started_at="
                "excluded.started_at, finished_at=NULL, result=NULL", (run, phase, time.time()))

    def finish_phase(self, run: str, phase: str, result: dict[str, Any]) -> None:
        self._check_phase(phase)
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO phases (run, phase, status, started_at, finished_at, result) "
                "VALUES (?, ?, 'done', ?, ?, ?) ON CONFLICT(run, phase) DO UPDATE SET "
                "status='done', finished_at=excluded.finished_at, result=excluded.result",
                (run, phase, now, now, json.dumps(result, sort_keys=True)))

    def phase_result(self, run: str, phase: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT status, result FROM phases WHERE run=? AND phase=?",
                               (run, phase)).fetchone()
        if row is None or row[0] != "done":
            return None
        result: dict[str, Any] = json.loads(row[1])
        return result

    def completed_phases(self, run: str) -> list[str]:
        done = {r[0] for r in self._db.execute(
            "SELECT phase FROM phases WHERE run=? AND status='done'", (run,))}
        return [p for p in PHASES if p in done]

    def phase_times(self, run: str) -> dict[str, float]:
        cur = self._db.execute("SELECT phase, started_at, finished_at FROM phases WHERE run=? "
                               "AND status='done'", (run,))
        return {p: round(float(f) - float(s), 2) for p, s, f in cur if s and f}

    def invalidate_from(self, run: str, phase: str) -> None:
        """Forget ``phase`` and every later phase of ``run`` (they must be redone)."""
        self._check_phase(phase)
        later = PHASES[PHASES.index(phase):]
        with self._tx() as db:
            db.executemany("DELETE FROM phases WHERE run=? AND phase=?",
                           [(run, p) for p in later])

    @staticmethod
    def _check_phase(phase: str) -> None:
        if phase not in PHASES:
            raise StateError(f"unknown phase {phase!r} (known: {', '.join(PHASES)})")

    # -- per-site status and evaluations -------------------------------------------------------
    def set_site_status(self, run: str, site: str, status: str, reason: str = "") -> None:
        if status not in SITE_STATUSES:
            raise StateError(f"unknown site status {status!r}")
        with self._tx() as db:
            db.execute(
                "INSERT INTO site_status VALUES (?, ?, ?, ?, ?) ON CONFLICT(run, site) DO "
                "UPDATE SET status=excluded.status, reason=excluded.reason, "
                "updated_at=excluded.updated_at", (run, site, status, reason, time.time()))

    def site_statuses(self, run: str) -> dict[str, dict[str, str]]:
        cur = self._db.execute("SELECT site, status, reason FROM site_status WHERE run=? "
                               "ORDER BY site", (run,))
        return {s: {"status": st, "reason": r or ""} for s, st, r in cur}

    def add_evaluation(self, run: str, site: str, role: str, record: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO evaluations VALUES (?, ?, ?, ?, ?) ON CONFLICT(run, site, role) DO "
                "UPDATE SET record=excluded.record, received_at=excluded.received_at",
                (run, site, role, json.dumps(record, sort_keys=True), time.time()))

    def evaluations(self, run: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for site, role, record in self._db.execute(
                "SELECT site, role, record FROM evaluations WHERE run=? ORDER BY site, role",
                (run,)):
            out.setdefault(site, {})[role] = json.loads(record)
        return out
