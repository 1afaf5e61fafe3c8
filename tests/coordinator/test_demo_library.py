"""The demo's run config and its terminal table (the full demo is measured in BENCHMARKS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.demo import demo_run_config, site_table_rows
from coordinator.errors import CoordinatorError
from coordinator.phases import settings_from_run_config


def test_lesion_classes_reach_the_gan_and_the_local_cnn(tmp_path: Path) -> None:
    cfg = demo_run_config(tmp_path / "w", tmp_path / "t", classes="lesion", seed=3)
    settings = settings_from_run_config(cfg)  # what the ServerApp will accept
    assert json.loads(settings.gan_config)["classes"] == "lesion"
    assert json.loads(settings.baseline_config)["classes"] == "lesion"
    assert settings.seed == 3 and json.loads(settings.gan_config)["seed"] == 3
    with pytest.raises(CoordinatorError, match="binary' or 'lesion"):
        demo_run_config(tmp_path / "w", tmp_path / "t", classes="multilabel")


def test_terminal_table_has_every_site_and_the_gain() -> None:
    rec = {"auc": 0.93, "ci_low": 0.88, "ci_high": 0.97, "n_test": 80}
    report = {"sites": [
        {"site": "site-a", "status": "ok", "baseline": rec, "own": None, "pooled": rec,
         "gain": {"delta": 0.0912, "p_value": 0.0041, "auc_a": 0.84, "auc_b": 0.93}},
        {"site": "site-b", "status": "dropped", "baseline": None, "own": None, "pooled": None,
         "gain": None}]}
    rows = site_table_rows(report)
    assert rows[0] == ["site-a", "ok", "0.930 [0.88, 0.97]", "–", "0.930 [0.88, 0.97]",
                       "+0.091 (p = 0.0041)", "80"]
    assert rows[1][:2] == ["site-b", "dropped"] and rows[1][4:6] == ["–", "–"]
