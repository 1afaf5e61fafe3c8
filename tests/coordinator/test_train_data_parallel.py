"""`synthlearn coordinator train` under torchrun: every process trains the candidate CNNs,
rank 0 alone writes the file the sites receive (the networks are the same everywhere)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.weights_io import load_candidates
from tests.shared.test_cnn_data_parallel import torchrun

pytestmark = pytest.mark.slow


def test_rank_zero_alone_writes_the_candidates(tmp_path: Path) -> None:
    r0, r1 = torchrun(tmp_path, "pooled")
    assert r0["weights"] == str(tmp_path / "cand-0.npz") and r1["weights"] is None
    assert not (tmp_path / "cand-1.npz").exists()
    assert r0["shards"] == r1["shards"] > 0  # both trained, step for step
    nets, meta = load_candidates(tmp_path / "cand-0.npz")
    assert meta["members"] == 2 and len(nets) == len(meta["candidates"]) >= 2
