"""The one home of small file helpers every package needs: atomic writes and SHA-256.

Why atomic everywhere: a coordinator or a site can be killed at any moment (Ctrl-C, a power
cut, Flower stopping a run); a half-written JSON would then poison the resume that follows.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file to stream into, renamed to ``path`` only when the block ends without an
    error (flushed and fsynced first): a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_write_json(path: Path, doc: Any, *, sort_keys: bool = True) -> None:
    """``doc`` as indented JSON plus a newline, written atomically."""
    text = json.dumps(doc, indent=2, sort_keys=sort_keys, default=str) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (weights and bundles can be large)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it: for logs a site counts on (a privacy ledger, an
    evaluation log), where a crash must not forget an entry."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


MAX_JSON_DEPTH = 64
"""Deepest nesting a JSON document from another party may have. synthlearn's own documents
(manifests, replies, requests, reports) nest about ten deep; a few kilobytes of ``[[[[`` would
otherwise exhaust the interpreter's stack in the parser or in any recursive check after it."""


class UntrustedJSONError(ValueError):
    """Bytes from another party that are not one plain JSON document (see
    :func:`loads_untrusted`); the message says why, the caller names the file or sender."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise UntrustedJSONError(f"key {key[:64]!r} appears twice in one object (parsers "
                                     "disagree on which value counts)")
        doc[key] = value
    return doc


def _depth_ok(doc: Any) -> bool:
    stack = [(doc, 1)]
    while stack:
        obj, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return False
        if isinstance(obj, dict):
            stack.extend((v, depth + 1) for v in obj.values())
        elif isinstance(obj, list):
            stack.extend((v, depth + 1) for v in obj)
    return True


def loads_untrusted(data: str | bytes) -> Any:
    """``json.loads`` for a document that crossed a site boundary (a bundle's manifest or
    signature, a reply, a request, a report handed to an auditor).

    Every way such bytes can fail is one :class:`UntrustedJSONError` (a ``ValueError``), never
    a ``RecursionError`` or the bare ``ValueError`` of an integer over Python's 4300-digit
    limit, which callers catching ``JSONDecodeError`` would let through and crash on. It also
    refuses nesting deeper than :data:`MAX_JSON_DEPTH`, a key twice in one object, and
    NaN/Infinity (not JSON; canonical JSON cannot hold them).

    >>> loads_untrusted(b'{"auc": 0.9}')
    {'auc': 0.9}
    >>> for bad in ('{"a": 1, "a": 2}', "[" * 100_000, "1" * 5000, "[" * 65 + "]" * 65):
    ...     try:
    ...         loads_untrusted(bad)
    ...     except UntrustedJSONError as exc:
    ...         print(str(exc)[:60])
    key 'a' appears twice in one object (parsers disagree on whi
    nested deeper than 64 levels
    not JSON (Exceeds the limit (4300 digits) for integer string
    nested deeper than 64 levels
    """
    def no_constant(name: str) -> Any:
        raise UntrustedJSONError(f"{name} is not a finite number (JSON has no NaN or Infinity)")

    try:
        doc = json.loads(data, object_pairs_hook=_no_duplicate_keys,
                         parse_constant=no_constant)
    except UntrustedJSONError:
        raise
    except RecursionError:
        raise UntrustedJSONError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a huge integer
        raise UntrustedJSONError(f"not JSON ({str(exc)[:200]})") from None
    if not _depth_ok(doc):
        raise UntrustedJSONError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return doc
