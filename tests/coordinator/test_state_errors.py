"""The coordinator's SQLite state damaged while a run uses it: one clear line, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.errors import StateError
from coordinator.state import CoordinatorState


def test_corruption_found_mid_run_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    st = CoordinatorState(path)
    for i in range(400):  # enough rows for the bundles table to span many pages
        st.record_bundle("r", verdict="rejected", bundle_id=f"id-{i}", sha256="0" * 64,
                         site="site-a", path="/x" * 50, reason="bad", message="m" * 200)
    st._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    st.close()
    later = CoordinatorState(path)  # opens fine: the damage is further in
    data = bytearray(path.read_bytes())
    data[8192:len(data) - 4096] = b"\xa5" * (len(data) - 4096 - 8192)
    path.write_bytes(bytes(data))
    with pytest.raises(StateError) as err:
        later.bundles("r")
    message = str(err.value)
    assert message.startswith(f"{path}: the coordinator state database failed (")
    assert "restore it from a backup or move it aside" in message and "\n" not in message
