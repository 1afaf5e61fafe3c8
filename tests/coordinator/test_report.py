"""The report page: every site, its numbers and CIs, why a site is missing; renders in Chromium."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from coordinator.report import build_report, render_html, utility_ratio, write_report
from tests.chromium import chromium_path


def _rec(auc: float) -> dict[str, Any]:
    return {"auc": auc, "ci_low": auc - 0.05, "ci_high": min(1.0, auc + 0.05), "n_test": 40,
            "verified": True, "key_fingerprint": "ab12"}


def sample_report() -> dict[str, Any]:
    sites: dict[str, dict[str, Any]] = {
        "site-a": {"status": "ok", "baseline": _rec(0.9), "own": _rec(0.8), "pooled": _rec(0.85)},
        "site-b": {"status": "ok", "baseline": _rec(0.8), "own": _rec(0.7), "pooled": _rec(0.84)},
        "site-c": {"status": "dropped", "reason": "evaluation round: Flower error code 5"},
        "site-<d>": {"status": "excluded", "reason": "bundle rejected [hash-mismatch]"},
    }
    pool = {"images": 400, "counts": {"normal": 200, "abnormal": 200}, "accepted": [
        {"site": "site-a", "bundle_id": "1234-5678-9abc", "images": 200, "counts": {"normal": 100},
         "audit": {"gates_passed": True, "gates": {"copy_rate": {
             "value": 0.12, "max": 0.1, "passed": True,
             "note": "above the limit but not significantly above the rate of new patients"}}},
         "dp": {"epsilon_spent": 7.5}, "key_fingerprint": "ab"}]}
    return build_report(run="r", sites=sites, pool=pool,
                        cnn={"n_images": 400, "epochs_run": 3, "seconds": 5, "device": "cpu",
                             "stopped": "epochs", "weights_sha256": "f" * 64})


def test_report_lists_every_site_with_ratio_and_reasons(tmp_path: Path) -> None:
    html_path, json_path = write_report(sample_report(), tmp_path)
    doc = json.loads(json_path.read_text())
    rows = {r["site"]: r for r in doc["sites"]}
    assert rows["site-a"]["utility_ratio"] == pytest.approx(0.85 / 0.9, abs=1e-4)
    assert rows["site-c"]["pooled"] is None and rows["site-c"]["status"] == "dropped"
    page = html_path.read_text()
    for text in ("site-a", "Flower error code 5", "hash-mismatch", "0.850", "[0.800, 0.900]",
                 "7.50", "<svg", "copy_rate: above the limit but not significantly"):
        assert text in page, text
    assert "site-<d>" not in page and "site-&lt;d&gt;" in page  # names are escaped
    assert "<script" not in page  # opens offline, inside a hospital network


def test_utility_ratio_needs_both_numbers() -> None:
    assert utility_ratio({"auc": 0.8}, {"auc": 0.5}) == 1.6
    assert utility_ratio(None, {"auc": 0.5}) is None
    assert utility_ratio({"auc": None}, {"auc": 0.5}) is None


@pytest.mark.skipif(chromium_path() is None, reason="headless Chromium not installed (Debian: "
                    "apt-get install chromium); the screenshot check runs where it is")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    html_path, _ = write_report(sample_report(), tmp_path)
    shot = tmp_path / "report.png"
    subprocess.run([str(chromium_path()), "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1200,1400",
                    html_path.as_uri()], check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape == (1400, 1200)
    # Not a blank page: text and the CI plot put dark pixels in the upper and the lower half.
    assert (img[:700] < 100).mean() > 0.002 and (img[700:] < 100).mean() > 0.001


def test_a_sites_resize_record_reaches_the_report_reduced_to_its_two_sides() -> None:
    """What a peer wrote about resizing its test images: two sides or nothing."""
    from coordinator.report import _resize_of

    assert _resize_of({"from": 32, "to": 64, "policy": "<script>x</script>"}) == \
        {"from": 32, "to": 64}
    for hostile in (None, "32->64", {"from": "32", "to": 64}, {"from": True, "to": 64},
                    {"from": 10**12, "to": 64}, {"from": 32}, [32, 64]):
        assert _resize_of(hostile) is None


def test_report_shows_a_bundles_reader_study_and_survives_hostile_values() -> None:
    good = {"readers_finished": 2, "images": {"real": 50, "synthetic": 50},
            "pooled": {"accuracy": {"k": 53, "n": 100, "value": 0.53, "ci_low": 0.43,
                                    "ci_high": 0.62}},
            "verdict": "readers could not tell them apart: accuracy 0.53 [0.43, 0.62]",
            "matches_bundle_set": True}
    hostile = {"readers_finished": "<script>x</script>", "images": [1],
               "pooled": {"accuracy": {"value": "NaN", "ci_low": -3, "ci_high": "x"}},
               "verdict": "<img src=x onerror=alert(1)>", "matches_bundle_set": False}
    report = {"run": "r", "created_at": "t", "software_version": "0", "sites": [],
              "pool": {"accepted": [{"site": "a", "metrics": {"reader_study": good}},
                                    {"site": "b", "metrics": {"reader_study": hostile}},
                                    {"site": "c", "metrics": "junk"}]}}
    page = render_html(report)
    assert "Reader studies" in page and "0.53 [0.43, 0.62] (53/100)" in page
    assert "<script>x" not in page and "<img src=x" not in page
    assert "another set" in page
