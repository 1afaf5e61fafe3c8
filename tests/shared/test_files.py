"""Atomic writes: a writer that fails part-way leaves the old file (or none) and no debris."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.files import atomic_write_bytes, atomic_writer


def test_a_failed_stream_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "pool" / "images.npy"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_writer(target) as fh:
        fh.write(b"half of the new")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["images.npy"]
    with atomic_writer(target) as fh:
        fh.write(b"new, ")
        fh.write(b"streamed")
    assert target.read_bytes() == b"new, streamed"
