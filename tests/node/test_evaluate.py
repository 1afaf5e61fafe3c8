"""`node evaluate`: weights round-trip through npz and score the site's real test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from node.baseline import run_baseline
from node.errors import StoreError
from node.evaluate import evaluate_weights
from node.store import SiteStore
from shared.classifier import ResNetClassifier
from shared.cnn_train import ClassifierConfig, predict_scores
from shared.weights_io import WeightsError, load_classifier, save_weights

CFG = ClassifierConfig(epochs=2, width=4, batch=16, patience=0, norm="group")


def test_baseline_weights_round_trip_to_the_same_auc(tiny_site: Path) -> None:
    base = run_baseline(tiny_site, CFG, progress=False, n_boot=200)
    weights = tiny_site / "metrics" / "baseline-cnn.npz"
    ev = evaluate_weights(tiny_site, weights, n_boot=200)
    assert ev["kind"] == "evaluation"
    assert ev["auc"] == pytest.approx(base["auc"], abs=1e-9)
    assert (ev["ci_low"], ev["ci_high"]) == pytest.approx((base["ci_low"], base["ci_high"]))
    assert ev["weights_sha256"] == base["weights_sha256"]
    x, y = SiteStore.open(tiny_site).load("test")
    p = predict_scores(load_classifier(weights), x)
    assert ev["auc"] == pytest.approx(roc_auc_score(y, p[:, 1]))
    assert ev["n_test"] == len(y)
    saved = tiny_site / "metrics" / f"evaluation-{ev['weights_sha256'][:12]}.json"
    assert json.loads(saved.read_text())["auc"] == ev["auc"]


def test_wrong_class_count_and_bad_files_are_refused(tiny_site: Path, tmp_path: Path) -> None:
    w = tmp_path / "three.npz"
    save_weights(ResNetClassifier(num_classes=3, width=4), w, {"classes": "binary"})
    with pytest.raises(StoreError, match="3 classes"):
        evaluate_weights(tiny_site, w)
    with pytest.raises(WeightsError):
        evaluate_weights(tiny_site, tmp_path / "missing.npz")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, a=np.array([object()], dtype=object))
    with pytest.raises(WeightsError):
        evaluate_weights(tiny_site, pickled)


def test_evaluate_cli(tiny_site: Path, tmp_path: Path) -> None:
    from node.cli import app

    w = tmp_path / "cnn.npz"
    save_weights(ResNetClassifier(num_classes=2, width=4).eval(), w, {"classes": "binary"})
    res = CliRunner().invoke(app, ["evaluate", "--site-dir", str(tiny_site), "--weights",
                                   str(w), "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.output)
    assert rec["kind"] == "evaluation" and 0.0 <= rec["auc"] <= 1.0


def test_cnn_trained_at_another_size_is_scored_after_an_explicit_recorded_resize(
        tiny_site: Path, tmp_path: Path) -> None:
    """Pooled weights learned at 64² scored on this 32² site: the test images are resized to
    64² and the record says so; weights at the site's own size need no resize."""
    model = ResNetClassifier(num_classes=2, width=4, norm="group")
    w = tmp_path / "pooled.npz"
    save_weights(model, w, {"classes": "binary", "input_size": 64})
    ev = evaluate_weights(tiny_site, w, n_boot=50, write=False)
    assert ev["resize"]["from"] == 32 and ev["resize"]["to"] == 64
    x, y = SiteStore.open(tiny_site).load("test")
    from node.evaluate import _resize_u8

    p = predict_scores(load_classifier(w), _resize_u8(x, 64))
    assert ev["auc"] == pytest.approx(roc_auc_score(y, p[:, 1]))
    save_weights(model, w, {"classes": "binary", "input_size": 32})
    assert evaluate_weights(tiny_site, w, n_boot=50, write=False)["resize"] is None
    for bad in (10**6, "64", True, 4):
        save_weights(model, w, {"classes": "binary", "input_size": bad})
        with pytest.raises(StoreError, match="input_size"):
            evaluate_weights(tiny_site, w, n_boot=50, write=False)
