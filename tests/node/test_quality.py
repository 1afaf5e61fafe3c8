"""Synthetic-quality scores computed at the site and exported (signed) with the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from node.baseline import run_baseline
from node.quality import QUALITY_FILE, score_synthetic
from node.store import SiteStore
from shared.cnn_train import ClassifierConfig
from shared.synthetic import SyntheticSet

CFG = ClassifierConfig(epochs=2, width=4, batch=16, patience=0, norm="group")


def test_quality_scores_are_numbers_from_real_images_that_stay(tiny_site: Path) -> None:
    from node.export import public_numbers

    run_baseline(tiny_site, CFG, progress=False, n_boot=100)
    x, y = SiteStore.open(tiny_site).load("train")
    # A "synthetic" set that is a flipped copy of the real train split: GAN-test must see it.
    SyntheticSet(np.ascontiguousarray(x[:, :, ::-1]), y, ["normal", "abnormal"]).save(
        tiny_site / "synthetic" / "s")
    rec = score_synthetic(tiny_site, "s", CFG, n_boot=100)
    saved = json.loads((tiny_site / "metrics" / QUALITY_FILE).read_text())
    assert saved == rec and rec["problems"] == []
    assert 0.0 <= rec["gan_train"]["auc"] <= 1.0 and rec["gan_train"]["n_test"] > 0
    assert rec["gan_test"]["auc"] > 0.5
    assert rec["distribution"]["encoder"] and rec["distribution"]["precision"] >= 0
    assert public_numbers(rec) == rec  # the export keeps every number, nothing else is there


def test_a_failing_score_is_reported_not_fatal(tiny_site: Path) -> None:
    x, _ = SiteStore.open(tiny_site).load("train")
    SyntheticSet(x[:4], np.zeros(4, np.int64), ["normal", "abnormal"]).save(
        tiny_site / "synthetic" / "one-class")
    rec = score_synthetic(tiny_site, "one-class", CFG, n_boot=100)
    assert "gan_train" not in rec and any("GAN-train" in p for p in rec["problems"])
    assert "gan_test" not in rec  # no local CNN on this site yet
