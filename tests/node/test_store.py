from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from node.errors import StoreError
from node.store import Accepted, SiteStore, Skipped, StoreWriter


def test_tiny_site_round_trips(tiny_site: Path) -> None:
    store = SiteStore.open(tiny_site)
    assert len(store) == 64
    x, y = store.load()
    assert x.shape == (64, 32, 32) and x.dtype == np.uint8
    assert set(y.tolist()) == {0, 1}
    s = store.summary()
    assert s["train"] + s["test"] == 64 and s["test"] > 0  # type: ignore[operator]


def test_same_patient_never_straddles_splits(tmp_path: Path) -> None:
    img = np.zeros((8, 8), np.uint8)
    with StoreWriter(tmp_path, size=8, test_fraction=0.5) as w:
        w.add_batch([Accepted(f"i{i}", img, "No finding", f"s{i}", patient_id=f"P{i % 5}")
                     for i in range(50)])
    store = SiteStore.open(tmp_path)
    by_patient: dict[str, set[str]] = {}
    for sample in store.samples():
        by_patient.setdefault(str(int(sample.image_id[1:]) % 5), set()).add(sample.split)
    assert all(len(v) == 1 for v in by_patient.values())


def test_orphan_shard_from_a_crash_is_dropped(tmp_path: Path) -> None:
    img = np.zeros((8, 8), np.uint8)
    with StoreWriter(tmp_path, size=8) as w:
        w.add_batch([Accepted("a", img, "No finding", "s-a")], [Skipped("s-x", "not-dicom", "x")])
    orphan = tmp_path / "store" / "shards" / "000007.npy"
    np.save(orphan, np.zeros((1, 8, 8), np.uint8))
    with StoreWriter(tmp_path, size=8) as w:
        assert w.known_sources() == {"s-a", "s-x"}
    assert not orphan.exists()
    assert len(SiteStore.open(tmp_path)) == 1


def test_size_mismatch_is_refused(tmp_path: Path) -> None:
    StoreWriter(tmp_path, size=8).close()
    with pytest.raises(StoreError, match="holds 8"):
        StoreWriter(tmp_path, size=16)


def test_instance_keys_are_salted_per_site(tmp_path: Path) -> None:
    """A SOP Instance UID names the hospital and a date: its key must not be a plain hash
    that anyone holding the UID (or a list of likely UIDs) could recompute or link."""
    import hashlib

    uid = "1.2.826.0.1.3680043.8.498.12345"
    with StoreWriter(tmp_path / "a", size=8) as a, StoreWriter(tmp_path / "b", size=8) as b:
        ka, kb = a.instance_key(uid), b.instance_key(uid)
        assert ka == a.instance_key(f" {uid}\n") and ka != kb
    for raw in (uid, "sop:" + uid):
        assert hashlib.sha256(raw.encode()).hexdigest() not in (ka, kb)
