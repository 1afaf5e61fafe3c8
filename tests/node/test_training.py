"""Training: kill + resume is bit-identical to an uninterrupted run; bad input is refused."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import node.training.loop as loop
from node.errors import CheckpointError, TrainingError
from node.training import GanConfig, train
from node.training.checkpoint import load_checkpoint

TINY = GanConfig(resolution=16, batch=8, kimg=0.08, checkpoint_kimg=0.032, channel_base=64,
                 channel_min=4, z_dim=8, w_dim=16, min_class_images=8, r1_interval=4,
                 log_every=2, grid_per_class=2, device="cpu", speed="float32")


def test_kill_and_resume_continue_same_steps_and_rng(tiny_site: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    straight = train(tiny_site, TINY, run_name="straight", progress=False)

    def die(step: int) -> None:
        if step == 6:  # after the checkpoint at step 4 (32 images), before the next one
            raise RuntimeError("simulated kill")

    monkeypatch.setattr(loop, "_after_step", die)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(tiny_site, TINY, run_name="killed", progress=False)
    assert load_checkpoint(tiny_site / "runs" / "killed" / "checkpoint.pt")["step"] == 4
    monkeypatch.setattr(loop, "_after_step", lambda step: None)
    resumed = train(tiny_site, TINY, run_name="killed", progress=False)

    a = load_checkpoint(straight / "checkpoint.pt")
    b = load_checkpoint(resumed / "checkpoint.pt")
    assert a["step"] == b["step"] == 10
    for key in ("G", "G_ema", "D"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert (straight / "samples-step0000010.png").exists()
    assert (straight / "metrics.jsonl").read_text().count("g_adv") >= 4


def test_corrupt_checkpoint_is_reported_not_restarted(tiny_site: Path) -> None:
    run = train(tiny_site, replace(TINY, kimg=0.016), run_name="r", progress=False)
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: corrupt"):
        train(tiny_site, TINY, run_name="r", progress=False)
    assert (run / "checkpoint.pt").read_bytes() == b"not a checkpoint"


def test_incompatible_resume_lists_differences(tiny_site: Path) -> None:
    train(tiny_site, replace(TINY, kimg=0.016), run_name="r", progress=False)
    with pytest.raises(CheckpointError, match="resolution: checkpoint has 16, now 32"):
        train(tiny_site, replace(TINY, resolution=32), run_name="r", progress=False)


def test_too_few_images_per_class_refused(tiny_site: Path) -> None:
    with pytest.raises(TrainingError, match="minimum 50 per class"):
        train(tiny_site, replace(TINY, min_class_images=50), run_name="r", progress=False)


def test_budget_required(tiny_site: Path) -> None:
    with pytest.raises(TrainingError, match="--kimg"):
        train(tiny_site, replace(TINY, kimg=None), progress=False)


def test_dp_path_trains_and_reports_epsilon(tiny_site: Path) -> None:
    cfg = replace(TINY, kimg=0.048, dp_epsilon=50.0, dp_delta=1e-3)
    run = train(tiny_site, cfg, run_name="dp", progress=False)
    import json

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dp"]["epsilon_spent"] <= 50.0 + 1e-6
    assert metrics["aug_p"] == 0.5  # fixed augmentation forced under DP
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["D_arch"]["norm"] == "group" and ckpt["D_arch"]["mbstd"] is False


def test_cpu_threads_follow_omp_num_threads_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    # Three SuperNodes on two cores each get OMP_NUM_THREADS=1; taking every core anyway made
    # each site's GAN crawl at 6 img/s in the loopback demo.
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert loop.pick_device().type == "cpu"
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        loop.pick_device()
        assert torch.get_num_threads() == (os.cpu_count() or 1)
    finally:
        torch.set_num_threads(before)
