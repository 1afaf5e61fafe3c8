"""The coordinator's CNN on several GPUs, rehearsed on the CPU: ``torchrun`` with the gloo
backend and two processes. Each process must train on its own half of every batch, the two
networks must stay identical (DistributedDataParallel averages the gradients; rank 0's
batch-norm statistics are broadcast before each validation), and a time budget must stop
both on the same step instead of leaving one waiting in a collective."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

WORKER = Path(__file__).with_name("_cnn_ddp_worker.py")

pytestmark = pytest.mark.slow


def torchrun(out: Path, mode: str, procs: int = 2, max_minutes: float = 0.0) -> list[Any]:
    """Run the worker under torchrun on a small two-class set; each rank's record."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 120, (64, 16, 16), dtype=np.uint8)
    y = np.arange(64) % 2
    x[y == 1, 4:12, 4:12] = 250  # a learnable class
    np.savez(out / "data.npz", x=x, y=y)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={procs}", str(WORKER), str(out), mode, str(max_minutes)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def test_two_processes_split_each_batch_and_end_identical(tmp_path: Path) -> None:
    r0, r1 = torchrun(tmp_path, "cnn")
    assert r0["sum"] == r1["sum"] and r0["abs"] == r1["abs"], "the processes drifted apart"
    assert (r0["epochs"], r0["best"]) == (r1["epochs"], r1["best"]) == (3, r0["best"])
    assert len(r0["shards"]) == len(r1["shards"]) > 0
    for a, b in zip(r0["shards"], r1["shards"], strict=True):
        assert not set(a) & set(b), "both processes trained on the same rows"
        assert len(a) + len(b) == 8 and abs(len(a) - len(b)) <= 1  # one batch of 8, halved


def test_one_process_trains_whole_batches(tmp_path: Path) -> None:
    (single,) = torchrun(tmp_path, "cnn", procs=1)
    assert single["shards"] and all(len(s) == 8 for s in single["shards"])


def test_one_processs_clock_running_out_stops_every_process_together(tmp_path: Path) -> None:
    r0, r1 = torchrun(tmp_path, "skew", max_minutes=10.0)  # only rank 1's clock runs out
    assert r0["stopped"] == r1["stopped"] == "time-budget"
    assert r0["epochs"] == r1["epochs"] < 3 and r0["sum"] == r1["sum"]


def test_a_batch_too_small_to_split_is_refused_before_training(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.cnn_train import ClassifierConfig, train_classifier
    from shared.data_parallel import ProcessGroup
    from shared.errors import ClassifierTrainingError

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    x = np.zeros((40, 8, 8), np.uint8)
    with pytest.raises(ClassifierTrainingError, match=r"batch 6 cannot be split over 4.*≥ 8"):
        train_classifier(x, np.arange(40) % 2, 2, ClassifierConfig(batch=6, width=8),
                         progress=False, group=ProcessGroup())


def test_without_a_group_the_recipe_stays_one_process_under_torchrun(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A site's S trains on rank 0 alone inside a multi-GPU GAN job: the recipe must not
    join the job's collectives just because torchrun's variables are set."""
    from shared.cnn_train import ClassifierConfig, train_classifier

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    rng = np.random.default_rng(0)
    trained = train_classifier(rng.integers(0, 255, (40, 16, 16), dtype=np.uint8),
                               np.arange(40) % 2, 2, ClassifierConfig(epochs=1, batch=8, width=8),
                               progress=False)
    assert len(trained.history) == 1
