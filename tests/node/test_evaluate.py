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


A_SITE = ("No finding", "Surgical implant", "Vertebral collapse", "Spondylolisthesis")


def test_weights_for_another_class_list_are_refused_with_both_lists(tmp_path: Path) -> None:
    """Issue 15: weights of [No finding, Vertebral collapse, Other lesions] were scored at a
    site with other classes (macro AUC 0.552) without complaint."""
    from node.errors import ClassMismatchError
    from tests.coordinator.fedutil import lesion_site

    site = lesion_site(tmp_path, "site-a", A_SITE, keyed=False)
    other = ["No finding", "Vertebral collapse", "Other lesions"]
    w = tmp_path / "other.npz"
    save_weights(ResNetClassifier(num_classes=3, width=4), w,
                 {"classes": "lesion", "class_names": other})
    with pytest.raises(ClassMismatchError) as err:
        evaluate_weights(site, w, n_boot=100)
    msg = str(err.value)
    assert "the CNN's weights has [No finding, Vertebral collapse, Other lesions]" in msg
    assert "this site's store has [0:No finding, 1:Disc space narrowing, 2:Foraminal" in msg
    # Same count, other names: refused too (the count check alone let this through).
    binary = tmp_path / "binary.npz"
    save_weights(ResNetClassifier(num_classes=8, width=4), binary,
                 {"classes": "lesion", "class_names": [f"c{i}" for i in range(8)]})
    with pytest.raises(ClassMismatchError, match=r"has \[c0, c1"):
        evaluate_weights(site, binary, n_boot=100)
    assert not (site / "metrics").exists()  # no evaluation record was written


def test_classes_a_site_lacks_are_reported_absent_never_scored(tmp_path: Path) -> None:
    from shared.vocabulary import LESION_CLASSES
    from tests.coordinator.fedutil import lesion_site

    site = lesion_site(tmp_path, "site-a", A_SITE, keyed=False)
    w = tmp_path / "vocab.npz"
    save_weights(ResNetClassifier(num_classes=8, width=4).eval(), w,
                 {"classes": "lesion", "class_names": list(LESION_CLASSES),
                  "class_ids": list(range(8))})
    ev = evaluate_weights(site, w, n_boot=100, write=False)
    absent = ["Disc space narrowing", "Foraminal stenosis", "Osteophytes", "Other lesions"]
    assert ev["class_names"] == list(LESION_CLASSES) and ev["class_ids"] == list(range(8))
    assert ev["absent_classes"] == absent
    assert all(ev["per_class_auc"][n] is None and ev["per_class_n"][n] == 0 for n in absent)
    present = [ev["per_class_auc"][n] for n in A_SITE]
    assert all(isinstance(v, float) for v in present)
    assert ev["auc"] == pytest.approx(float(np.mean(present)))  # macro over present classes


def test_evaluate_cli(tiny_site: Path, tmp_path: Path) -> None:
    from node.cli import app

    w = tmp_path / "cnn.npz"
    save_weights(ResNetClassifier(num_classes=2, width=4).eval(), w, {"classes": "binary"})
    res = CliRunner().invoke(app, ["evaluate", "--site-dir", str(tiny_site), "--weights",
                                   str(w), "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.output)
    assert rec["kind"] == "evaluation" and 0.0 <= rec["auc"] <= 1.0


def test_evaluation_carries_the_paired_test_against_the_local_cnn(tiny_site: Path,
                                                                   tmp_path: Path) -> None:
    """Pooled vs local on the same real test images, computed at the site, numbers only."""
    from node.federation import check_numbers_only
    from shared.metrics.paired import delong_paired

    base = run_baseline(tiny_site, CFG, progress=False, n_boot=200)
    other = tmp_path / "pooled.npz"
    save_weights(ResNetClassifier(num_classes=2, width=4).eval(), other, {"classes": "binary"})
    ev = evaluate_weights(tiny_site, other, n_boot=200, write=False)
    paired = ev["paired_vs_local"]
    x, y = SiteStore.open(tiny_site).load("test")
    local = predict_scores(load_classifier(tiny_site / "metrics" / "baseline-cnn.npz"), x)
    pooled = predict_scores(load_classifier(other), x)
    ref = delong_paired(y, local[:, 1], pooled[:, 1])
    assert paired["auc_a"] == pytest.approx(base["auc"], abs=1e-6)  # the local real AUC
    assert paired["auc_b"] == pytest.approx(ev["auc"], abs=1e-6)
    assert paired["p_value"] == pytest.approx(ref.p_value, abs=1e-6)
    check_numbers_only(ev)  # may be signed and sent
    assert "paired_vs_local" not in evaluate_weights(tiny_site, other, write=False,
                                                     compare_local=False)


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
    from shared.synthetic import resize_u8

    p = predict_scores(load_classifier(w), resize_u8(x, 64))
    assert ev["auc"] == pytest.approx(roc_auc_score(y, p[:, 1]))
    save_weights(model, w, {"classes": "binary", "input_size": 32})
    assert evaluate_weights(tiny_site, w, n_boot=50, write=False)["resize"] is None
    for bad in (10**6, "64", True, 4):
        save_weights(model, w, {"classes": "binary", "input_size": bad})
        with pytest.raises(StoreError, match="input_size"):
            evaluate_weights(tiny_site, w, n_boot=50, write=False)
