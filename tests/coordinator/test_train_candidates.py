"""The coordinator's CNN as candidates: every epoch of every seed, for the sites to choose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from coordinator.train import train_pooled
from shared.cnn_train import ClassifierConfig
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
    k = members * _per_member(members, size, largest)
    assert members <= k <= 64
    assert k * size <= MAX_CANDIDATE_BYTES and k * largest < MAX_MEMBER_BYTES
