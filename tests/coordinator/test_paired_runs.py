"""benchmarks/paired_runs.py: a lever's pooled arm against the baseline's on the same test
images. A variant whose scores rank better must come out positive; runs of another
partition (other labels) must be refused rather than compared."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from tests.conftest import load_benchmark


def _mod() -> ModuleType:
    return load_benchmark("paired_runs")


def _run(folder: Path, labels: np.ndarray, pooled: np.ndarray, local: np.ndarray) -> Path:
    folder.mkdir()
    arrays: dict[str, Any] = {"labels/site-a": labels, "pooled/site-a": pooled,
                              "local-a/site-a": local}
    np.savez(folder / "scores.npz", **arrays)
    return folder


def test_better_ranking_variant_is_positive_and_other_partition_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    local = y + rng.normal(0, 1.0, y.size)
    base = _run(tmp_path / "base", y, y + rng.normal(0, 1.5, y.size), local)
    better = _run(tmp_path / "better", y, y + rng.normal(0, 0.5, y.size), local)
    mod = _mod()
    out = mod.compare(base, better)
    cell = out["arms"]["pooled"]["site-a"]
    assert cell["delta"] > 0.05 and cell["p_value"] < 0.05
    assert out["local_real_identical"]
    assert "pooled-selected" not in out["arms"]  # an arm a run lacks is skipped, not invented
    other = _run(tmp_path / "other", y[::-1].copy(), y[::-1] * 1.0, local)
    with pytest.raises(SystemExit, match="differs"):
        mod.compare(base, other)


def test_runs_with_other_tests_or_arms_are_refused_not_trimmed(tmp_path: Path) -> None:
    """A comparison that silently dropped a test or an arm would read as complete."""
    y = np.repeat([0, 1], 20)
    s = y + 0.5
    base = _run(tmp_path / "base", y, s, s)
    extra = tmp_path / "extra"
    extra.mkdir()
    extra_arrays: dict[str, Any] = {"labels/site-a": y, "pooled/site-a": s,
                                    "local-a/site-a": s, "labels/extra": y, "pooled/extra": s}
    np.savez(extra / "scores.npz", **extra_arrays)
    mod = _mod()
    with pytest.raises(SystemExit, match="tests"):
        mod.compare(base, extra)
    other_arm = tmp_path / "other-arm"
    other_arm.mkdir()
    other_arrays: dict[str, Any] = {"labels/site-a": y, "pooled-selected/site-a": s,
                                    "local-a/site-a": s}
    np.savez(other_arm / "scores.npz", **other_arrays)
    with pytest.raises(SystemExit, match="no 'pooled' scores"):
        mod.compare(base, other_arm)


def test_twins_compare_an_arm_with_its_adapted_twin_in_one_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 100)
    run = tmp_path / "run"
    run.mkdir()
    np.savez(run / "scores.npz", **{"labels/site-a": y,
                                    "pooled-selected/site-a": y + rng.normal(0, 1.5, y.size),
                                    "pooled-selected-adabn/site-a": y + rng.normal(0, 0.5, y.size),
                                    "pooled/site-a": y + rng.normal(0, 1.0, y.size)})
    mod = _mod()
    out = mod.compare_twins(run)
    assert list(out["arms"]) == ["pooled-selected-adabn"]  # 'pooled' has no twin
    cell = out["arms"]["pooled-selected-adabn"]["site-a"]
    assert cell["delta"] > 0.05 and cell["p_value"] < 0.05
    lone = tmp_path / "lone"
    lone.mkdir()
    np.savez(lone / "scores.npz", **{"labels/site-a": y, "pooled/site-a": y * 1.0})
    with pytest.raises(SystemExit, match="no arm has a twin"):
        mod.compare_twins(lone)


def _gen_run(folder: Path, y: np.ndarray, local: np.ndarray, pooled: np.ndarray) -> Path:
    folder.mkdir()
    np.savez(folder / "scores.npz", **{"labels/site-c": y, "local-c/site-c": local,
                                       "pooled/site-c": pooled})
    return folder


def test_vs_local_averages_generator_runs_and_counts_their_spread(tmp_path: Path) -> None:
    """Three generator runs of one partition: the mean gain is the runs' mean, and runs that
    disagree widen the CI beyond the test-image SE alone (a lucky run cannot carry it)."""
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 60)
    local = y + rng.normal(0, 1.0, y.size)
    noise = rng.normal(0, 1.0, y.size)
    agree = [_gen_run(tmp_path / f"agree{i}", y, local, y * 1.3 + noise + rng.normal(0, .05,
                                                                                      y.size))
             for i in range(3)]
    mod = _mod()
    out = mod.versus_local(agree)["arms"]["pooled"]["site-c"]
    assert out["n_runs"] == 3 and np.isclose(out["mean"], np.mean(out["per_run"]))
    assert out["mean"] > 0 and out["sd_runs"] < 0.01
    # The same run twice: the image SE is the paired test's, and no spread is invented.
    from shared.metrics.paired import delong_paired

    same = mod.versus_local([agree[0], agree[0]])["arms"]["pooled"]["site-c"]
    paired = delong_paired(y, local, np.load(agree[0] / "scores.npz")["pooled/site-c"])
    assert np.isclose(same["se_images"], paired.se) and same["sd_runs"] == 0
    assert np.isclose(same["mean"], paired.delta)
    # Two runs that disagree in sign: a mean between them is no finding, and the CI (t with
    # one degree of freedom for the run term) says so.
    split = [_gen_run(tmp_path / f"split{i}", y, local, y * k + rng.normal(0, 1.0, y.size))
             for i, k in enumerate((0.2, 2.5))]
    wide = mod.versus_local(split)["arms"]["pooled"]["site-c"]
    assert wide["per_run"][0] < 0 < wide["per_run"][1]
    assert wide["ci"][0] < 0 < wide["ci"][1] and wide["p_value"] > 0.05
    assert wide["df"] < 2
    with pytest.raises(SystemExit, match="one generator run"):
        mod.versus_local([agree[0]])
    other = _gen_run(tmp_path / "other", y[::-1].copy(), local, local)
    with pytest.raises(SystemExit, match="differs"):
        mod.versus_local([agree[0], other])


def test_candidates_table_scores_each_candidate_sent_and_adapted_with_the_picks(
        tmp_path: Path) -> None:
    import json

    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 30)
    run = tmp_path / "run"
    run.mkdir()
    np.savez(run / "scores.npz", **{"labels/site-a": y, "pooled-selected/site-a": y * 1.0})
    cand = {f"pooled-selected/cand/site-a/{how}/{i}": y * k + rng.normal(0, 1, y.size)
            for how, k in (("sent", 0.5), ("site", 2.0)) for i in range(3)}
    np.savez(run / "candidate-scores.npz", **cand)
    picks = {"sent": {"picked": [2]}, "either": {"picked": [1, 2], "adapted": [True, False]}}
    (run / "results.json").write_text(json.dumps(
        {"selection": {"pooled-selected": {"site-a": picks}}, "selection_format": 2}))
    mod = _mod()
    cell = mod.candidate_table(run)["arms"]["pooled-selected"]["site-a"]
    assert len(cell["sent"]) == len(cell["site"]) == 3
    assert cell["site"][1] == roc_auc_score(y, cand["pooled-selected/cand/site-a/site/1"])
    assert all(b > a for a, b in zip(cell["sent"], cell["site"], strict=True))
    assert cell["picks"] == picks
    (run / "results.json").write_text(json.dumps({"selection": {"site-a": picks["sent"]}}))
    with pytest.raises(SystemExit, match=r"older multisite\.py"):
        mod.candidate_table(run)  # an old run's record would give empty picks, silently
    (run / "candidate-scores.npz").unlink()
    with pytest.raises(SystemExit, match="--adapt-bn"):
        mod.candidate_table(run)


def test_ceiling_is_centralised_minus_local_and_refuses_runs_of_another_recipe(
        tmp_path: Path) -> None:
    """The headroom pooling real data would give a site: positive where the centralised CNN
    ranks better, checked equal across runs of one seed (else they are not comparable)."""
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 100)
    local = y + rng.normal(0, 1.5, y.size)
    central = y + rng.normal(0, 0.5, y.size)

    def run(name: str, c: np.ndarray, pooled: np.ndarray) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        np.savez(folder / "scores.npz", **{"labels/site-a": y, "local-a/site-a": local,
                                           "centralised/site-a": c, "pooled/site-a": pooled})
        return folder

    mod = _mod()
    one = run("one", central, local.copy())  # pooled ranks exactly like local: gap 0
    two = run("two", central, central.copy())  # pooled ranks like central: gap = headroom
    cell = mod.ceiling([one, two])["None"]["sites"]["site-a"]
    assert cell["headroom"] > 0.05 and cell["p_value"] < 0.05
    assert cell["centralised"] - cell["local"] == pytest.approx(cell["headroom"])
    assert cell["pooled_minus_local"] == pytest.approx(cell["headroom"] / 2)
    assert "pooled-selected_minus_local" not in cell  # an arm the runs lack is not invented
    other = run("other", central + rng.normal(0, 0.1, y.size), local.copy())
    with pytest.raises(SystemExit, match="centralised/site-a"):
        mod.ceiling([one, other])
