"""The coordinator's CNN as candidates: every epoch of every seed, for the sites to choose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from coordinator.train import train_pooled
from shared.cnn_train import ClassifierConfig
from shared.protocol import DEFAULT_SITE_CANDIDATES
from shared.synthetic import SyntheticSet
from shared.weights_io import load_candidates


def _pool(n: int = 48) -> SyntheticSet:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    x = rng.integers(0, 60, (n, 16, 16), dtype=np.uint8)
    x[y == 1, 5:11, 5:11] += 150
    return SyntheticSet(x, y, ["normal", "abnormal"], {"synthetic_only": True,
                                                       "bundle_ids": ["b1"], "sites": ["s"]})


def test_every_epoch_of_every_seed_is_a_candidate(tmp_path: Path) -> None:
    cfg = ClassifierConfig(epochs=2, width=4, batch=16, patience=0, seed=5)
    rec = train_pooled(_pool(), tmp_path / "cnn.npz", cfg, progress=False, members=2)
    assert rec["members"] == 2 and rec["candidates"] == 4
    nets, meta = load_candidates(tmp_path / "cnn.npz")
    assert [(c["seed"], c["epoch"]) for c in meta["candidates"]] == [(5, 1), (5, 2), (6, 1),
                                                                       (6, 2)]
    assert meta["synthetic_only"] is True and meta["members"] == 2
    # the default is each seed's best synthetic-validation epoch, one per seed
    assert len(meta["default"]) == 2
    assert {meta["candidates"][i]["seed"] for i in meta["default"]} == {5, 6}
    x = torch.randn(3, 1, 16, 16)
    outs = [n(x) for n in nets]
    assert not torch.allclose(outs[1], outs[3])  # two seeds, two different networks


def test_members_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="members"):
        train_pooled(_pool(), tmp_path / "c.npz", ClassifierConfig(epochs=1, width=4),
                     progress=False, members=0)


def test_members_every_site_would_refuse_are_refused_before_training(tmp_path: Path) -> None:
    """8 members of a width-128 CNN make a file over the sites' 256 MiB / 64 MiB-per-tensor
    caps: the coordinator used to train them all, then write a file no site accepts."""
    cfg = ClassifierConfig(epochs=1, width=128, batch=16)
    with pytest.raises(ValueError, match="cnn-members or cnn-width"):
        train_pooled(_pool(), tmp_path / "c.npz", cfg, progress=False, members=8)
    assert not (tmp_path / "c.npz").exists()


@pytest.mark.parametrize(("width", "members"), [(16, 3), (64, 8), (96, 3), (128, 1)])
def test_the_candidates_kept_fit_what_a_site_accepts(width: int, members: int) -> None:
    from coordinator.train import MAX_CANDIDATE_BYTES, _network_bytes, _per_member
    from shared.weights_io import MAX_MEMBER_BYTES

    size, largest = _network_bytes(ClassifierConfig(width=width), 2)
    for runs in (members, 2 * members):  # one round, or a two-round run's both pools
        if runs * size > MAX_CANDIDATE_BYTES:  # refused before training, naming what to lower
            with pytest.raises(ValueError, match="cnn-members or cnn-width"):
                _per_member(runs, size, largest)
            continue
        k = runs * _per_member(runs, size, largest)
        assert runs <= k <= DEFAULT_SITE_CANDIDATES  # what a site accepts at its defaults
        assert k * size <= MAX_CANDIDATE_BYTES and k * largest < MAX_MEMBER_BYTES


def test_both_rounds_pools_are_candidates_in_one_file_each_saying_its_round(
        tmp_path: Path) -> None:
    first, second = _pool(), _pool(40)
    second.info = {"synthetic_only": True, "bundle_ids": ["b2", "b1"], "sites": ["s"]}
    cfg = ClassifierConfig(epochs=2, width=4, batch=16, patience=0, seed=3)
    rec = train_pooled(first, tmp_path / "cnn.npz", cfg, progress=False, members=1,
                       round2=second)
    nets, meta = load_candidates(tmp_path / "cnn.npz")
    assert [(c["round"], c["epoch"]) for c in meta["candidates"]] == [(1, 1), (1, 2), (2, 1),
                                                                       (2, 2)]
    assert rec["candidate_rounds"] == [1, 1, 2, 2] and rec["n_images"] == 88
    assert meta["bundle_ids"] == ["b1", "b2"] and meta["n_images"] == 88
    assert [r["n_images"] for r in meta["rounds"]] == [48, 40]
    assert {meta["candidates"][i]["round"] for i in meta["default"]} == {1, 2}
    x = torch.randn(3, 1, 16, 16)
    assert not torch.allclose(nets[1](x), nets[3](x))  # same seed, other pool


def test_the_demo_defaults_over_two_rounds_stay_within_what_a_site_accepts() -> None:
    """3 members × 10 epochs on each of two pools would be 60 candidates, which every site at
    its default policy (32) refuses after the coordinator spent its time."""
    from coordinator.phases import RunSettings
    from coordinator.train import _network_bytes, _per_member

    s = RunSettings()
    runs = 2 * s.cnn_members
    keep = min(s.cnn_epochs, _per_member(runs, *_network_bytes(s.cnn_config(), 2)))
    assert runs * keep <= DEFAULT_SITE_CANDIDATES


def test_pools_of_other_classes_or_sizes_cannot_share_a_file(tmp_path: Path) -> None:
    other = SyntheticSet(np.zeros((8, 16, 16), np.uint8), np.arange(8) % 2, ["a", "b"],
                         {"synthetic_only": True})
    bigger = SyntheticSet(np.zeros((8, 32, 32), np.uint8), np.arange(8) % 2,
                          ["normal", "abnormal"], {"synthetic_only": True})
    for second in (other, bigger):
        with pytest.raises(ValueError, match="differs from round 1's"):
            train_pooled(_pool(), tmp_path / "c.npz", ClassifierConfig(epochs=1, width=4),
                         progress=False, round2=second)
    assert not (tmp_path / "c.npz").exists()
