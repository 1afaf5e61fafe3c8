"""DP through the training loop: the whole run's ε, SpineGAN's S inside the budget, the
sensitivity of the joint D-step, and the DP accounting reaching the audit."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import node.training.loop as loop
from node.errors import TrainingError
from node.training import GanConfig, train
from node.training.spine_classifier import ensure_spine_classifier, spine_path

TINY = GanConfig(resolution=16, batch=8, kimg=0.048, checkpoint_kimg=1.0, channel_base=64,
                 channel_min=4, z_dim=8, w_dim=16, min_class_images=8, log_every=2,
                 grid_per_class=2, device="cpu", dp_epsilon=40.0, dp_delta=1e-3,
                 spine_epochs=1, spine_width=4)


def test_spinegan_under_dp_trains_s_privately_and_reports_the_composed_epsilon(
        tiny_site: Path) -> None:
    run = train(tiny_site, replace(TINY, model="spinegan"), run_name="sg", progress=False)
    dp = json.loads((run / "metrics.json").read_text())["dp"]
    assert dp["composition"] == "sequential (sum of parts)"
    d, s = dp["parts"]["discriminator"], dp["parts"]["spine_classifier"]
    assert 0 < d["epsilon_spent"] <= 32.0 + 1e-6  # 80 % of ε for D
    assert 0 < s["epsilon_spent"] <= 8.0 + 1e-6   # 20 % for S
    assert dp["epsilon_spent"] == pytest.approx(d["epsilon_spent"] + s["epsilon_spent"])
    assert dp["epsilon_spent"] <= 40.0 + 1e-6 and dp["delta"] == pytest.approx(1e-3)


def test_a_non_private_s_is_never_reused_by_a_dp_run(tiny_site: Path) -> None:
    run_dir = tiny_site / "runs" / "sg"
    images = np.zeros((16, 16, 16), np.uint8)
    images[8:] = 200
    labels = np.repeat([0, 1], 8).astype(np.int64)
    ensure_spine_classifier(run_dir, images, labels, 2, resolution=16, epochs=1, width=4,
                            seed=0, progress=False)
    assert spine_path(run_dir).exists()
    with pytest.raises(TrainingError, match="trained without DP"):
        train(tiny_site, replace(TINY, model="spinegan"), run_name="sg", progress=False)


def test_dp_step_always_uses_a_full_batch_of_fakes(tiny_site: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Poisson batches vary in size; the fake count must not follow them (sensitivity 2C).
    seen: list[tuple[int, int]] = []
    original = loop.GanLoss.discriminator_loss

    def spy(self, real, c_real, z, c_fake, joint=False):  # type: ignore[no-untyped-def]
        seen.append((real.shape[0], z.shape[0]))
        return original(self, real, c_real, z, c_fake, joint=joint)

    monkeypatch.setattr(loop.GanLoss, "discriminator_loss", spy)
    train(tiny_site, TINY, run_name="dp", progress=False)
    assert {n_fake for _, n_fake in seen} == {TINY.batch}
    assert len({n_real for n_real, _ in seen}) > 1  # the real side really was Poisson


def test_dp_run_stops_on_its_planned_steps(tiny_site: Path) -> None:
    run = train(tiny_site, TINY, run_name="dp", progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped"] == "dp_budget"
    assert metrics["steps"] == metrics["dp"]["planned_steps"] == 6  # 48 images / batch 8


def test_audit_and_export_read_the_dp_accounting_of_the_run_that_made_the_set(
        tiny_site: Path) -> None:
    from node.audit import find_dp_report
    from node.generate import generate

    train(tiny_site, TINY, run_name="private", progress=False)
    s = generate(tiny_site, 8, run_name="private", seed=0, out_name="p")
    dp = find_dp_report(tiny_site, s)
    assert dp is not None and dp["target_epsilon"] == 40.0
    with pytest.raises(TrainingError, match="has none inside its privacy budget"):
        generate(tiny_site, 8, run_name="private", seed=0, out_name="q", filter_threshold=0.5)


def test_a_finished_dp_run_asked_again_is_done_and_spends_no_more_epsilon(
        tiny_site: Path) -> None:
    """The same training request twice (a coordinator restarted after the site had finished,
    in round 1 or 2): the finished run is the answer. Before, a DP checkpoint past step 0
    was refused as a resume, so the site could never answer that run tag again."""
    from node.privacy_ledger import spent

    run = train(tiny_site, TINY, run_name="again", progress=False)
    before, stamp = spent(tiny_site), (run / "checkpoint.pt").stat().st_mtime_ns
    assert train(tiny_site, TINY, run_name="again", progress=False) == run
    assert spent(tiny_site) == before
    assert (run / "checkpoint.pt").stat().st_mtime_ns == stamp
    with pytest.raises(Exception, match="different configuration"):
        train(tiny_site, replace(TINY, dp_epsilon=20.0), run_name="again", progress=False)
