"""`node preprocess`: a hospital's DICOM folder + label sheet → its site store.

Why it is built this way:

* **Streaming, bounded memory.** Workers get file *names*, decode one file at a time and send
  back only the small store-size image; the main process writes a shard every ``batch_size``
  images. Peak memory is (workers × one decoded source) + (one batch of store images),
  whatever the size of the archive.
* **Parallel.** A ``spawn`` process pool (``concurrent.futures.ProcessPoolExecutor``; safe
  even when the caller has torch threads), one worker per core by default, at most two files
  in flight per worker. ``workers=1`` runs in-process.
* **A crashing decoder costs one file, not the run.** A worker that dies (a segfault in a C
  codec, an out-of-memory kill) breaks the pool; the files that were in flight are retried
  one at a time in a fresh pool, and the one that kills a worker on its own is skipped as
  ``decode-error`` ("worker process died while decoding …"); the run then goes on in a fresh
  pool and nothing already in the store is lost. With ``workers=1`` decoding runs in the main
  process, where such a crash cannot be caught: it ends the run (which, being resumable,
  can be re-run with ``--workers 2`` or more to get the file skipped instead).
* **Incremental and resumable.** Every source ends in the catalog as accepted or skipped, in the
  same transaction as its pixels (see :mod:`node.store`). A re-run lists the folder, leaves
  known sources alone and processes the rest, so a killed run simply resumes; sources skipped
  as ``unlabelled`` or ``unreadable`` are retried on every run, since a new label sheet or a
  fixed permission can make them usable. A file's header is checked as an image before its
  label is looked up, so an SR, a presentation state, a DICOMDIR, a colour or multi-frame
  object is skipped for what it is (``missing-pixel-data``, ``colour``, …) and never asks for
  a label row.
* **Never fatal for one file.** Each bad file is skipped with a short reason and a one-line
  detail naming it (printed, stored in the catalog, listed in the report). Only a missing
  folder, an unusable label sheet or an incompatible store stop a run.
* **One DICOM instance, one image.** Archive exports often hold the same instance under two
  file names (two study folders, a re-export, another transfer syntax). A sheet keyed by file
  name gives each copy its own row and, possibly, its own split: a train/test leak. The first
  copy processed is stored; the others are skipped as ``duplicate-instance`` naming the image
  id kept (the instance is the SOP Instance UID, else the file meta's copy of it). A store
  from before this check has its stored files' headers read once; files not there to re-read
  are retried on later runs and named in a note until they are. With several workers
  "first" is completion order; the copies hold one instance, so only their label rows can
  differ, and the skip line names both.
* **No PHI in the store.** Pixels, the label, salted hashes of PatientID and SOP Instance
  UID, the label sheet's image id and the source's relative path (the local provenance map)
  are written; no tag value is. Skip details quote only geometry and transfer syntaxes,
  never tag values.

The report (this run's counts, every skip, and the store summary) is returned and written to
``SITE/store/preprocess-report.json``; the resolved settings to
``SITE/store/preprocess-config.json``.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.dicom_pixels import (
    BURNED_IN,
    DECODE_ERROR,
    DUPLICATE,
    DUPLICATE_INSTANCE,
    MIN_SIDE,
    UNKNOWN_LABEL,
    UNLABELLED,
    UNREADABLE,
    SkipFileError,
    check_image,
    checked_store_pixels,
    read_dataset,
)
from node.errors import IngestError
from node.labels import LABEL_MAP, LabelSheet, checked_box, load_label_map, load_labels, match_keys
from node.store import Accepted, SiteStore, Skipped, StoreWriter
from shared.config import write_resolved
from shared.files import atomic_write_bytes
from shared.progress import optional_progress

REPORT_NAME = "preprocess-report.json"


@dataclass(frozen=True)
class PreprocessConfig:
    """Resolved settings of one preprocessing run (written next to the store)."""

    dicom_dir: str
    labels: str
    size: int = 256
    test_fraction: float = 0.2
    workers: int = 1
    min_side: int = MIN_SIDE
    batch_size: int = 64
    allow_burned_in: bool = False
    """Ingest DICOMs marked BurnedInAnnotation = YES (the admin checked the pixels)."""
    label_map: str = ""
    """The site's ``label-map.csv`` (:mod:`node.labels`), or "" when it has none."""


# ---------------------------------------------------------------------------------------------
# Worker side (module globals are per process; set by _init_worker)

_ROOT: Path | None = None
_SHEET: LabelSheet | None = None
_SIZE = 256
_MIN_SIDE = MIN_SIDE
_ALLOW_BURNED_IN = False


def _init_worker(root: str, labels: str, size: int, min_side: int,
                 allow_burned_in: bool = False, label_map: str = "") -> None:
    global _ROOT, _SHEET, _SIZE, _MIN_SIDE, _ALLOW_BURNED_IN
    words = load_label_map(Path(label_map)) if label_map else {}
    _ROOT, _SHEET, _SIZE, _MIN_SIDE = Path(root), load_labels(Path(labels), words), size, min_side
    _ALLOW_BURNED_IN = allow_burned_in


def process_file(rel: str) -> Accepted | Skipped:
    """One source → Accepted or Skipped; never raises (the run must always finish)."""
    assert _ROOT is not None and _SHEET is not None, "worker not initialised"
    try:
        try:
            st = os.stat(_ROOT / rel)
        except OSError as exc:
            return Skipped(rel, UNREADABLE, f"{rel}: cannot be opened ({exc.strerror})")
        if not stat.S_ISREG(st.st_mode):
            return Skipped(rel, UNREADABLE, f"{rel}: not a regular file")
        ds = read_dataset(_ROOT / rel, rel)
        # A non-image is skipped as such, not as unlabelled.
        check_image(ds, rel, _MIN_SIDE, allow_burned_in=_ALLOW_BURNED_IN)
        uid = str(ds.get("SOPInstanceUID", "") or "").strip() or None
        keys = match_keys(rel, uid)
        row = _SHEET.lookup(keys)
        if row is None and (why := _SHEET.rejection(keys)) is not None:
            return Skipped(rel, UNKNOWN_LABEL, f"{rel}: {why}")
        if row is None:
            return Skipped(rel, UNLABELLED, f"{rel}: no row in {_SHEET.path.name} for "
                           f"image_id '{Path(rel).stem}' or its SOP Instance UID; "
                           "add one (never guessed)")
        pixels, geom = checked_store_pixels(ds, _SIZE, rel)
        pid = row.patient_id or str(ds.get("PatientID", "") or "").strip() or None
        box, note = checked_box(row, _SHEET.path, geom.rows, geom.columns)
        mapped = geom.map_bbox(box) if box is not None else None
        if box is not None and mapped is None:
            note = (f"{_SHEET.path.name}:{row.line}: box {box} lies outside the kept centre "
                    "square; image kept without a box")
        return Accepted(
            image_id=row.image_id,
            pixels=pixels,
            lesion=row.lesion,
            source_key=rel,
            patient_id=pid,
            split=row.split,  # type: ignore[arg-type]  # validated by load_labels
            bbox=mapped,
            note=note,
            instance_uid=sop_instance_uid(ds),
        )
    except SkipFileError as exc:
        return Skipped(rel, exc.reason, exc.detail)
    except MemoryError:
        return Skipped(rel, UNREADABLE, f"{rel}: out of memory while decoding; use fewer "
                       "--workers")
    except Exception as exc:  # defensive: a decoder bug must not end the run
        text = " ".join(str(exc).split())[:160]
        return Skipped(rel, UNREADABLE, f"{rel}: could not be read or decoded "
                       f"({type(exc).__name__}: {text})")


# ---------------------------------------------------------------------------------------------
# Main side


def scan(dicom_dir: Path, exclude: tuple[Path, ...] = ()) -> list[str]:
    """Every non-directory entry under ``dicom_dir`` (relative posix paths, sorted), hidden
    ones and the excluded paths (the label sheet, a site dir inside the folder) left out.

    Broken links and special files are listed too, so they are reported as unreadable
    rather than silently ignored."""
    root = dicom_dir.resolve()
    ex = tuple(p.resolve() for p in exclude)
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (here / d).resolve() not in ex)
        for name in sorted(filenames):
            p = here / name
            if name.startswith(".") or _resolved(p) in ex:
                continue
            out.append(p.relative_to(root).as_posix())
    return out


def _resolved(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # symlink loops
        return p


def sop_instance_uid(ds: Any) -> str | None:
    """The instance a DICOM holds: SOP Instance UID, else the file meta's Media Storage SOP
    Instance UID (some exports drop the former). Read the same way at ingest and when indexing
    an older store, so that one instance always gets one key."""
    meta = getattr(ds, "file_meta", None)
    for value in (ds.get("SOPInstanceUID"),
                  meta.get("MediaStorageSOPInstanceUID") if meta is not None else None):
        if isinstance(value, bytes):  # a UID stored under a wrong VR
            value = value.decode("ascii", "replace")
        uid = str(value or "").strip(" \0\t\r\n")
        if uid:
            return uid
    return None


def _read_instance_uid(path: Path) -> str | None:
    """The SOP Instance UID of a stored source's header, read as :func:`read_dataset` reads
    files (a file without the 'DICM' preamble by force); None when it is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    def read(force: bool) -> Any:
        return pydicom.dcmread(path, stop_before_pixels=True, force=force,
                               specific_tags=["SOPInstanceUID"])

    try:
        try:
            ds = read(False)
        except InvalidDicomError:
            ds = read(True)
        return sop_instance_uid(ds)
    except Exception:  # not DICOM (an importer's PNG), unparsable: nothing to index
        return None


def _index_instances(writer: StoreWriter, dicom_dir: Path) -> tuple[list[str], int]:
    """Record the SOP Instance UIDs of images stored before they were kept (one header read
    per stored file; on later runs, only those whose file was missing). Returns one line per
    pair of stored images found to be the same instance — stored twice: the admin must remove
    one row from the label sheet and rebuild — and the number of stored sources still not
    indexed because their file is not under ``dicom_dir`` (moved, deleted, another folder):
    a copy of those is not recognised, so the store does not pretend they were checked."""
    todo = writer.unindexed_sources() if writer.instances_indexed() else \
        writer.accepted_sources()
    seen = writer.known_instances()
    pairs: list[tuple[str, str]] = []
    twice: list[tuple[str, str]] = []
    missing: dict[str, str] = {}
    for rel, image_id in sorted(todo.items()):
        path = dicom_dir / rel
        try:
            regular = stat.S_ISREG(os.stat(path).st_mode)
        except (OSError, ValueError):
            regular = False
        if not regular:  # gone, or a FIFO that a read would wait on forever
            missing[rel] = image_id
            continue
        uid = _read_instance_uid(path)
        if uid is None:
            continue
        key = writer.instance_key(uid)
        if key in seen:
            if seen[key] != image_id:
                twice.append((seen[key], image_id))
            continue
        seen[key] = image_id
        pairs.append((uid, image_id))
    writer.record_index(pairs, missing, twice)
    return [_stored_twice_line(a, b) for a, b in writer.stored_twice()], len(missing)


def _stored_twice_line(a: str, b: str) -> str:
    return (f"image ids '{a}' and '{b}' are the same DICOM instance, stored twice before this "
            "version checked (they may sit on both sides of the train/test split); remove one "
            "row from the label sheet and preprocess into a new --site-dir")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _results(files: list[str], cfg: PreprocessConfig) -> Iterator[Accepted | Skipped]:
    """One result per file, in completion order (``process_file`` is looked up per call, so a
    test can substitute a picklable stand-in)."""
    init = (cfg.dicom_dir, cfg.labels, cfg.size, cfg.min_side, cfg.allow_burned_in,
            cfg.label_map)
    if cfg.workers <= 1 or len(files) <= 1:
        _init_worker(*init)
        for rel in files:
            yield process_file(rel)
        return
    yield from _pool_results(files, cfg.workers, init)


def _ping() -> bool:
    """A no-op task: a fresh pool that cannot run it cannot run anything."""
    return True


def _worker_died(rel: str) -> Skipped:
    return Skipped(rel, DECODE_ERROR, f"{rel}: worker process died while decoding it (a crash "
                   "in a pixel decoder, or the process was killed, e.g. for memory)")


def _worker_failed(rel: str, exc: BaseException) -> Skipped:
    text = " ".join(str(exc).split())[:160]
    return Skipped(rel, UNREADABLE, f"{rel}: the worker's result could not be received "
                   f"({type(exc).__name__}: {text})")


def _pool_results(files: list[str], workers: int,
                  init: tuple[str, str, int, int, bool, str]) -> Iterator[Accepted | Skipped]:
    """``process_file`` over a spawn process pool that survives workers dying.

    At most ``2 × workers`` futures are in flight (bounded memory). When a worker dies the pool
    is broken and every in-flight file fails with it; those files become suspects, run one at a
    time in a fresh pool: a suspect that breaks the pool alone is skipped as decode-error, the
    others get their normal result. Then the pool runs at full width again. A fresh pool
    first runs a no-op task, so a pool that cannot start at all stops the run (IngestError)
    instead of being blamed on the files.
    """
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")
    todo = deque(files)
    suspects: deque[str] = deque()
    limit = 2 * workers
    while todo or suspects:
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=init)
        inflight: dict[Future[Accepted | Skipped], str] = {}
        broken = False
        try:
            try:
                pool.submit(_ping).result()
            except BrokenProcessPool as exc:
                raise IngestError(f"the worker processes could not start ({exc}); run with "
                                  "--workers 1 to see why") from None
            while (todo or suspects or inflight) and not broken:
                solo = bool(suspects)  # isolating a crash: one file at a time
                queue = suspects if solo else todo
                while queue and len(inflight) < (1 if solo else limit):
                    rel = queue.popleft()
                    try:
                        inflight[pool.submit(process_file, rel)] = rel
                    except BrokenProcessPool:
                        queue.appendleft(rel)
                        broken = True
                        break
                if not inflight:
                    continue
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    rel = inflight.pop(fut)
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        if solo:  # it broke the pool on its own
                            yield _worker_died(rel)
                        else:
                            suspects.append(rel)
                        continue
                    except Exception as exc:  # e.g. a result that cannot be unpickled
                        yield _worker_failed(rel, exc)
                        continue
                    yield result
            if broken:  # every other in-flight future fails with the pool (or has finished)
                for fut in wait(inflight).done:
                    rel = inflight.pop(fut)
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        suspects.append(rel)
                        continue
                    except Exception as exc:
                        result = _worker_failed(rel, exc)
                    yield result
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def preprocess(
    dicom_dir: Path,
    labels_csv: Path,
    site_dir: Path,
    size: int = 256,
    test_fraction: float = 0.2,
    workers: int | None = None,
    progress: bool = True,
    *,
    min_side: int = MIN_SIDE,
    batch_size: int = 64,
    echo: Callable[[str], None] | None = None,
    allow_burned_in: bool = False,
) -> dict[str, Any]:
    """Ingest new files of ``dicom_dir`` into the store at ``site_dir``; return the report.

    ``echo`` receives one line per skipped file (default: printed above the progress bar
    when ``progress`` is on, silent otherwise).
    """
    dicom_dir, labels_csv, site_dir = Path(dicom_dir), Path(labels_csv), Path(site_dir)
    if not dicom_dir.is_dir():
        raise IngestError(f"{dicom_dir}: not a folder; pass the folder holding the DICOM files")
    if batch_size < 1:
        raise IngestError(f"batch size must be ≥ 1, got {batch_size}")
    map_path = site_dir / LABEL_MAP
    # fail early, in the main process, on a bad sheet or label map
    sheet = load_labels(labels_csv, load_label_map(map_path))
    n_workers = default_workers() if workers is None or workers < 1 else workers
    cfg = PreprocessConfig(str(dicom_dir.resolve()), str(labels_csv.resolve()), size,
                           test_fraction, n_workers, min_side, batch_size, allow_burned_in,
                           str(map_path.resolve()) if map_path.is_file() else "")
    started = time.perf_counter()
    writer = StoreWriter(site_dir, size=size, test_fraction=test_fraction)
    try:
        write_resolved(cfg, site_dir / "store", "preprocess-config.json")
        retried = (writer.forget_skipped(UNLABELLED) + writer.forget_skipped(UNREADABLE)
                   + writer.forget_skipped(UNKNOWN_LABEL))
        if allow_burned_in:  # the admin has now checked them: try them again
            retried += writer.forget_skipped(BURNED_IN)
        known = writer.known_sources()
        known_ids = writer.known_image_ids()
        if writer.instances_indexed() and not writer.unindexed_sources():
            stored_twice = [_stored_twice_line(a, b) for a, b in writer.stored_twice()]
            unindexed = 0
        else:
            stored_twice, unindexed = _index_instances(writer, dicom_dir)
        known_instances = writer.known_instances()
        found = scan(dicom_dir, exclude=(labels_csv, site_dir))
        todo = [rel for rel in found if rel not in known]
        accepted_n = 0
        skipped_rows: list[Skipped] = []
        notes: list[str] = (list(sheet.notes) if todo else []) + stored_twice
        if unindexed:
            notes.append(f"{unindexed} image(s) stored before DICOM instances were checked "
                         "have no file in the DICOM folder to re-read (moved or deleted): "
                         "a copy of them under another file name is not recognised; run with "
                         "the folder they were ingested from to check them")
        batch: list[Accepted] = []
        skip_batch: list[Skipped] = []
        last_flush = time.monotonic()

        def flush() -> None:
            nonlocal batch, skip_batch, last_flush
            if batch or skip_batch:
                writer.add_batch(batch, skip_batch)
            batch, skip_batch, last_flush = [], [], time.monotonic()

        bar_cm = optional_progress(progress, "files")
        with bar_cm as bar:
            task = bar.add_task("preprocess", total=len(todo), status="") if bar else None
            say = echo or ((lambda line: bar.console.print(line, highlight=False, markup=False))
                           if bar else (lambda line: None))
            for line in notes:
                say(f"label note: {line}")
            for result in _results(todo, cfg):
                if isinstance(result, Accepted) and result.image_id in known_ids:
                    result = Skipped(result.source_key, DUPLICATE,
                                     f"{result.source_key}: image id '{result.image_id}' is "
                                     "already in the store from another file")
                elif isinstance(result, Accepted) and result.instance_uid and (
                        kept := known_instances.get(writer.instance_key(result.instance_uid))):
                    result = Skipped(result.source_key, DUPLICATE_INSTANCE,
                                     f"{result.source_key}: the same DICOM instance (SOP "
                                     f"Instance UID) is already stored as image id '{kept}'; "
                                     "a copy is stored once, so it cannot sit on both sides "
                                     "of the train/test split")
                if isinstance(result, Accepted):
                    if result.note:
                        notes.append(result.note)
                        say(f"label note: {result.note}")
                    known_ids.add(result.image_id)
                    if result.instance_uid:
                        known_instances[writer.instance_key(result.instance_uid)] = \
                            result.image_id
                    batch.append(result)
                    accepted_n += 1
                else:
                    skip_batch.append(result)
                    skipped_rows.append(result)
                    say(f"skipped [{result.reason}] {result.detail}")
                if len(batch) >= batch_size or len(skip_batch) >= 256 or (
                        time.monotonic() - last_flush > 10.0):
                    flush()
                if bar is not None and task is not None:
                    bar.update(task, advance=1,
                               status=f"{accepted_n} ok, {len(skipped_rows)} skipped")
            flush()
    finally:
        writer.close()
    seconds = time.perf_counter() - started
    reasons: dict[str, int] = {}
    for s in skipped_rows:
        reasons[s.reason] = reasons.get(s.reason, 0) + 1
    report: dict[str, Any] = {
        "kind": "preprocess_report",
        "config": {"size": size, "test_fraction": test_fraction, "workers": n_workers,
                   "min_side": min_side, "batch_size": batch_size},
        "label_sheet": {"layout": sheet.layout, "rows": len(sheet),
                        "label_map": cfg.label_map or None},
        "label_notes": notes,
        "files_found": len(found),
        "already_in_store": len(found) - len(todo),
        "retried": retried,
        "processed": len(todo),
        "accepted": accepted_n,
        "skipped": len(skipped_rows),
        "skip_reasons": dict(sorted(reasons.items())),
        "skipped_files": [{"file": s.source_key, "reason": s.reason, "detail": s.detail}
                          for s in skipped_rows],
        "seconds": round(seconds, 3),
        "files_per_s": round(len(todo) / seconds, 2) if seconds > 0 else None,
        "store": SiteStore.open(site_dir).summary(),
    }
    atomic_write_bytes(site_dir / "store" / REPORT_NAME,
                       (json.dumps(report, indent=2) + "\n").encode())
    return report
