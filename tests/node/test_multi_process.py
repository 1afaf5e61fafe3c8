"""Several GPUs on one machine, rehearsed on the CPU: ``torchrun`` with the gloo backend, two
processes, tiny nets. The processes must stay identical (gradients averaged every step) and a
checkpoint must resume whatever the process count (2 → 1 → 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("_ddp_worker.py")

pytestmark = pytest.mark.slow


def _torchrun(out: Path, kimg: float, procs: int, model: str = "gan") -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={procs}", str(WORKER), str(out), str(kimg), model]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]


def _ranks(out: Path) -> list[dict[str, float]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def test_two_processes_stay_identical_and_resume_across_process_counts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 255, (32, 8, 8), dtype=np.uint8),
             y=np.arange(32) % 2)
    _torchrun(tmp_path, 0.012, 2)  # 3 steps of 4 images, 2 per process
    r0, r1 = _ranks(tmp_path)
    assert r0["world"] == r1["world"] == 2 and r0["local_batch"] == 2
    assert r0["sum"] == r1["sum"] and r0["abs"] == r1["abs"], "processes drifted apart"
    assert not r0["group_alive"] and not r1["group_alive"], "training left its process group up"
    # `node train` reads the summary on every rank: none may return before rank 0 wrote it
    assert r0["summary_seen"] and r1["summary_seen"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["kimg"] == pytest.approx(0.012)

    for p in tmp_path.glob("rank*.json"):
        p.unlink()
    _torchrun(tmp_path, 0.02, 1)  # the 2-process checkpoint, resumed by one process
    (single,) = _ranks(tmp_path)
    assert single["world"] == 1 and single["nimg"] == 20

    (tmp_path / "rank0.json").unlink()
    _torchrun(tmp_path, 0.028, 2)  # and back to two
    r0, r1 = _ranks(tmp_path)
    assert r0["nimg"] == r1["nimg"] == 28 and r0["sum"] == r1["sum"]
    events = [json.loads(line) for line in
              (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    starts = [e for e in events if e.get("event") == "start"]
    assert [e["processes"] for e in starts] == [2, 1, 2]
    assert [e["kimg"] for e in starts] == pytest.approx([0.0, 0.012, 0.02])


def test_spinegan_trains_its_classifier_on_rank_zero_alone_and_goes_on(tmp_path: Path) -> None:
    """S trains on rank 0 while the others wait: its CNN recipe must not join the job's
    collectives (a hang here was a regression once)."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 255, (32, 16, 16), dtype=np.uint8),
             y=np.arange(32) % 2)
    _torchrun(tmp_path, 0.012, 2, model="spinegan")
    r0, r1 = _ranks(tmp_path)
    assert r0["world"] == r1["world"] == 2 and r0["sum"] == r1["sum"]


def test_a_run_started_from_a_synthetic_set_keeps_its_process_group_after_pretraining(
        tmp_path: Path) -> None:
    """Round 2 under torchrun: the pretraining on the shared synthetic set is a training of its
    own inside the run; ending it must not end the process group the fine-tune still uses."""
    from shared.synthetic import SyntheticSet

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 255, (32, 8, 8), dtype=np.uint8),
             y=np.arange(32) % 2)
    SyntheticSet(rng.integers(0, 255, (16, 8, 8), dtype=np.uint8), np.arange(16) % 2,
                 ["a", "b"]).save(tmp_path / "syn")
    _torchrun(tmp_path, 0.012, 2, model="init")
    r0, r1 = _ranks(tmp_path)
    assert r0["world"] == r1["world"] == 2 and r0["sum"] == r1["sum"]
    assert r0["nimg"] == r1["nimg"] == 12
    assert not r0["group_alive"] and not r1["group_alive"]
    assert (tmp_path / "run" / "pretrain" / "metrics.json").exists()
