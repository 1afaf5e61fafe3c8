"""Pooling: good bundles are kept, bad ones rejected with a reason, replays refused, state
survives a restart."""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from coordinator.errors import PoolError
from coordinator.pool import pool_bundles, require_pool
from coordinator.state import CoordinatorState
from shared.bundle import write_bundle
from shared.signing import generate_keypair
from shared.synthetic import SyntheticSet


def fake_synthetic(n: int, size: int, seed: int) -> SyntheticSet:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    labels = np.arange(n) % 2
    return SyntheticSet(images, labels, ["normal", "abnormal"])


def make_bundle(root: Path, site: str, n: int = 10, seed: int = 0, size: int = 16,
                trust: Path | None = None, synthetic: SyntheticSet | None = None) -> Path:
    keys = root / "keys" / site
    if not (keys / "site.key").exists():
        generate_keypair(keys)
    if trust is not None:
        trust.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(keys / "site.pub", trust / f"{site}.pub")
    out = root / "bundles" / f"{site}-{seed}.slbundle"
    write_bundle(out, synthetic or fake_synthetic(n, size, seed), site=site, key_dir=keys,
                 metrics={}, audit={"gates_passed": True}, dp=None, config={"model": "test"})
    return out


def tamper(path: Path) -> None:
    """Rewrite one image member's bytes (the signed manifest no longer matches)."""
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "images/000000.png":
                data = data[:-20] + bytes(20)
            dst.writestr(info, data)
    tmp.replace(path)


def test_good_bundles_pooled_and_tampered_one_excluded_with_reason(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    a = make_bundle(tmp_path, "site-a", seed=1, trust=trust)
    b = make_bundle(tmp_path, "site-b", seed=2, trust=trust)
    c = make_bundle(tmp_path, "site-c", seed=3, trust=trust)
    tamper(c)
    state = CoordinatorState(tmp_path / "state.db")
    res = pool_bundles([a, b, c], trust, state, "r1", balance=False, out_dir=tmp_path / "pool")
    assert sorted(x["site"] for x in res.accepted) == ["site-a", "site-b"]
    assert [(r["site"], r["reason"]) for r in res.rejected] == [("site-c", "hash-mismatch")]
    assert res.pooled is not None and len(res.pooled) == 20
    assert res.pooled.info["synthetic_only"] is True
    assert (tmp_path / "pool" / "pooled" / "images.npy").exists()
    verdicts = {(r["site"], r["verdict"], r["reason"]) for r in state.bundles("r1")}
    assert ("site-c", "rejected", "hash-mismatch") in verdicts


def test_unknown_key_and_replay_are_refused(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    a = make_bundle(tmp_path, "site-a", seed=1, trust=trust)
    stranger = make_bundle(tmp_path, "site-x", seed=5)  # key never added to the trust folder
    state = CoordinatorState(tmp_path / "state.db")
    first = pool_bundles([a, stranger], trust, state, "r1")
    assert [r["reason"] for r in first.rejected] == ["unknown-key"]
    # A restart re-pools the same run: its own bundle is not a replay …
    again = pool_bundles([a], trust, CoordinatorState(tmp_path / "state.db"), "r1")
    assert len(again.accepted) == 1
    # … but another run resending the same bundle is.
    replay = pool_bundles([a], trust, CoordinatorState(tmp_path / "state.db"), "r2")
    assert [r["reason"] for r in replay.rejected] == ["replayed"]
    with pytest.raises(PoolError, match="replayed"):
        require_pool(replay, tmp_path)


def test_second_bundle_of_a_site_and_duplicate_images_dropped(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    shared_set = fake_synthetic(8, 16, seed=9)
    a = make_bundle(tmp_path, "site-a", seed=1, trust=trust, synthetic=shared_set)
    a2 = make_bundle(tmp_path, "site-a", seed=2, trust=trust)
    b = make_bundle(tmp_path, "site-b", seed=3, trust=trust, synthetic=shared_set)
    res = pool_bundles([a, a2, b], trust, CoordinatorState(tmp_path / "s.db"), "r",
                       balance=False)
    assert [r["reason"] for r in res.rejected] == ["duplicate-site"]
    assert res.duplicates_dropped == 8 and res.pooled is not None and len(res.pooled) == 8


def test_balance_undersamples_the_majority_class(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    syn = fake_synthetic(12, 16, seed=4)
    syn = SyntheticSet(syn.images, np.array([0] * 9 + [1] * 3), syn.class_names)
    a = make_bundle(tmp_path, "site-a", trust=trust, synthetic=syn)
    res = pool_bundles([a], trust, CoordinatorState(tmp_path / "s.db"), "r", balance=True)
    assert res.pooled is not None and res.pooled.counts() == {"normal": 3, "abnormal": 3}
    assert res.balanced_dropped == 6


def test_state_is_read_back_after_restart(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    st = CoordinatorState(db)
    st.finish_phase("run", "bundles", {"bundles": {"site-a": "x"}})
    st.set_site_status("run", "site-b", "dropped", "no reply")
    st.add_evaluation("run", "site-a", "pooled", {"auc": 0.8})
    st.close()
    back = CoordinatorState(db)
    assert back.completed_phases("run") == ["bundles"]
    assert back.site_statuses("run")["site-b"] == {"status": "dropped", "reason": "no reply"}
    assert back.evaluations("run") == {"site-a": {"pooled": {"auc": 0.8}}}
    back.invalidate_from("run", "bundles")
    assert back.completed_phases("run") == []


def _reference_pool(sets: dict[str, SyntheticSet], seed: int) -> tuple[np.ndarray, np.ndarray,
                                                                        np.ndarray]:
    """What pooling means, the slow obvious way: every site's rows in site order, the first
    copy of an image kept, then each class undersampled to the smallest (seeded)."""
    images, labels, soft, seen = [], [], [], set()
    for site in sorted(sets):
        s = sets[site]
        teacher = s.soft if s.soft is not None else np.eye(2, dtype=np.float32)[s.labels]
        for img, lab, p in zip(s.images, s.labels, teacher, strict=True):
            if img.tobytes() not in seen:
                seen.add(img.tobytes())
                images.append(img)
                labels.append(lab)
                soft.append(p)
    x, y, t = np.stack(images), np.array(labels), np.stack(soft)
    target = np.bincount(y).min()
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(y), bool)
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        keep[rng.choice(idx, target, replace=False) if len(idx) > target else idx] = True
    return x[keep], y[keep], t[keep]


def test_pool_streams_to_disk_and_equals_the_obvious_pool(tmp_path: Path) -> None:
    """Bundles are merged on disk (site order, duplicates across sites once, balanced, teacher
    labels where a site sent them), the result left on disk for the CNN, staging cleaned."""
    trust = tmp_path / "trust"
    common = fake_synthetic(6, 8, seed=99).images
    sets, paths = {}, []
    for i, site in enumerate(["zulu", "alpha", "mike"]):
        s = fake_synthetic(20 + 5 * i, 8, seed=i)
        images = s.images.copy()
        images[:4] = common[:4]
        labels = (np.arange(len(images)) % 3 == 0).astype(np.int64) if i == 1 else s.labels
        soft = None
        if i == 2:
            p = np.random.default_rng(i).random((len(images), 2)).astype(np.float32)
            soft = p / p.sum(1, keepdims=True)
        sets[site] = SyntheticSet(images, labels, s.class_names, soft=soft)
        paths.append(make_bundle(tmp_path, site, trust=trust, synthetic=sets[site]))
    out = tmp_path / "pool"
    (out / ".pool-staging-old").mkdir(parents=True)  # left by a killed pool
    res = pool_bundles(paths, trust, CoordinatorState(tmp_path / "s.db"), "r", seed=4,
                       out_dir=out)
    x, y, t = _reference_pool(sets, seed=4)
    assert res.pooled is not None and isinstance(res.pooled.images, np.memmap)
    assert res.duplicates_dropped == 8 and res.pooled.info["sites"] == ["alpha", "mike", "zulu"]
    loaded = SyntheticSet.load(out / "pooled")
    for pooled in (res.pooled, loaded):
        assert np.array_equal(np.asarray(pooled.images), x)
        assert np.array_equal(pooled.labels, y) and np.allclose(pooled.soft, t, atol=1e-6)
    assert sorted(p.name for p in out.iterdir()) == ["pool.json", "pooled"]
    in_memory = pool_bundles(paths, trust, CoordinatorState(tmp_path / "m.db"), "r", seed=4)
    assert in_memory.pooled is not None and not isinstance(in_memory.pooled.images, np.memmap)
    assert np.array_equal(in_memory.pooled.images, x)


def test_bundles_with_another_class_list_are_refused_with_both_lists(tmp_path: Path) -> None:
    from tests.coordinator.fedutil import stand_in_lesions

    trust = tmp_path / "trust"
    a = make_bundle(tmp_path, "site-a", trust=trust, synthetic=stand_in_lesions(
        12, 16, 0, ("No finding", "Surgical implant", "Vertebral collapse")))
    b = make_bundle(tmp_path, "site-b", seed=2, trust=trust)  # binary: normal / abnormal
    res = pool_bundles([a, b], trust, CoordinatorState(tmp_path / "s.db"), "r1", balance=False)
    (rej,) = res.rejected
    assert (rej["site"], rej["reason"]) == ("site-b", "class-mismatch")
    assert ("site site-b has [0:normal, 1:abnormal], the pool (from site site-a) has "
            "[0:No finding, 1:Disc space narrowing, 2:Foraminal stenosis") in rej["message"]


def test_a_class_only_one_site_has_is_pooled_under_its_vocabulary_id(tmp_path: Path) -> None:
    from shared.vocabulary import LESION_CLASSES
    from tests.coordinator.fedutil import stand_in_lesions

    trust = tmp_path / "trust"
    a = make_bundle(tmp_path, "site-a", trust=trust, synthetic=stand_in_lesions(
        12, 16, 0, ("No finding", "Surgical implant", "Vertebral collapse")))
    b = make_bundle(tmp_path, "site-b", trust=trust, synthetic=stand_in_lesions(
        8, 16, 1, ("No finding", "Spondylolisthesis")))
    res = pool_bundles([a, b], trust, CoordinatorState(tmp_path / "s.db"), "r1", balance=False)
    assert res.rejected == [] and res.pooled is not None
    assert res.pooled.class_names == list(LESION_CLASSES)
    assert res.pooled.counts() == {**dict.fromkeys(LESION_CLASSES, 0), "No finding": 8,
                                   "Surgical implant": 4, "Vertebral collapse": 4,
                                   "Spondylolisthesis": 4}
    assert res.summary()["class_ids"] == list(range(8))
    # Balancing ignores the classes nobody sent (it would otherwise drop everything).
    bal = pool_bundles([a, b], trust, CoordinatorState(tmp_path / "t.db"), "r2")
    assert bal.pooled is not None and set(bal.pooled.counts().values()) == {0, 4}


def test_class_ids_that_do_not_fit_the_names_are_refused(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A signed manifest whose ids say one thing and names another: which would the CNN
    learn? Neither: the bundle is refused."""
    from shared import bundle
    from tests.coordinator.fedutil import stand_in_lesions

    trust = tmp_path / "trust"
    monkeypatch.setattr(bundle, "class_ids", lambda names: list(range(len(names)))[::-1])
    bad = make_bundle(tmp_path, "site-a", trust=trust, synthetic=stand_in_lesions(
        8, 16, 0, ("No finding", "Surgical implant")))
    monkeypatch.undo()
    res = pool_bundles([bad], trust, CoordinatorState(tmp_path / "s.db"), "r1")
    (rej,) = res.rejected
    assert rej["reason"] == "class-mismatch" and "[7, 6, 5" in rej["message"]


def test_a_mistyped_bundle_folder_names_it_and_keeps_the_last_pool(tmp_path: Path) -> None:
    """`coordinator pool bundle` (for `bundles`) used to blame `WORK/bundles` and leave the
    finished pool marked as running, so `coordinator train` no longer found it."""
    from typer.testing import CliRunner

    from coordinator.cli import app

    trust = tmp_path / "trust"
    make_bundle(tmp_path, "site-a", seed=1, trust=trust)
    work = tmp_path / "work"
    args = ["pool", "--trust", str(trust), "--work", str(work)]
    res = CliRunner().invoke(app, [*args, str(tmp_path / "bundles")])
    assert res.exit_code == 0, res.output
    (tmp_path / "empty").mkdir()
    for folder, reason in (("bundle", "bundle folder not found"),
                           ("empty", r"no \*\.slbundle or \*\.zip file in this folder")):
        res = CliRunner().invoke(app, [*args, str(tmp_path / folder)])
        assert isinstance(res.exception, PoolError)
        assert str(res.exception).startswith(f"{tmp_path / folder}: ")
        assert re.search(reason, str(res.exception))
        state = CoordinatorState(work / "state.db")
        assert state.phase_result("files", "pool") is not None  # the earlier pool still counts
