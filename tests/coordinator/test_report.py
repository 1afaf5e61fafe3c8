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


QUALITY = {"gan_train": {"auc": 0.91, "ci_low": 0.85, "ci_high": 0.96, "n_test": 80},
           "gan_test": {"auc": 0.88, "ci_low": 0.86, "ci_high": 0.9},
           "distribution": {"encoder": "domain-rfconv-v1", "fd": 12.5, "precision": 0.71,
                            "recall": 0.64}}


def _paired(local: float, pooled: float, p: float) -> dict[str, Any]:
    return {"auc_a": local, "auc_b": pooled, "delta": pooled - local, "p_value": p,
            "ci_low": pooled - local - 0.05, "ci_high": pooled - local + 0.05,
            "test": "DeLong (paired, two-sided)"}


def sample_report(samples: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    pooled_b = {**_rec(0.92), "paired_vs_local": _paired(0.81, 0.92, 0.004)}
    sites: dict[str, dict[str, Any]] = {
        "site-a": {"status": "ok", "baseline": _rec(0.9), "own": _rec(0.8), "pooled": _rec(0.85)},
        "site-b": {"status": "ok", "baseline": _rec(0.81), "own": _rec(0.7), "pooled": pooled_b},
        "site-c": {"status": "dropped", "reason": "evaluation round: Flower error code 5"},
        "site-<d>": {"status": "excluded", "reason": "bundle rejected [hash-mismatch]"},
        "site-e": {"status": "failed", "reason": "its reply held no verified pooled-CNN "
                   "evaluation", "problems": ["pooled: signature does not verify"]},
    }
    pool = {"images": 400, "counts": {"normal": 200, "abnormal": 200}, "accepted": [
        {"site": "site-a", "bundle_id": "1234-5678-9abc", "images": 200, "counts": {"normal": 100},
         "audit": {"gates_passed": True, "gates": {"copy_rate": {
             "value": 0.12, "max": 0.1, "passed": True,
             "note": "above the limit but not significantly above the rate of new patients"}}},
         "dp": {"epsilon_spent": 7.5}, "key_fingerprint": "ab",
         "metrics": {"synthetic-quality": QUALITY}}]}
    accepted = {a["site"]: a for a in pool["accepted"]}
    for name, s in sites.items():
        s["bundle"] = accepted.get(name)
    return build_report(run="r", sites=sites, pool=pool,
                        cnn={"n_images": 400, "epochs_run": 3, "seconds": 5, "device": "cpu",
                             "stopped": "epochs", "weights_sha256": "f" * 64},
                        samples=samples)


def test_report_states_the_gain_and_shows_quality_scores(tmp_path: Path) -> None:
    html_path, json_path = write_report(sample_report(), tmp_path)
    page = html_path.read_text()
    # The paired test in words, with the site's own numbers.
    assert "site-b: +0.11 AUC by joining (0.81 → 0.92), p = 0.004" in page
    assert 'aria-label="gain in AUC by joining' in page
    # Site a's signed quality scores; site b sent none; failed and dropped sites are listed.
    for text in ("0.910", "0.880", "12.50", "0.71", "domain-rfconv-v1", "no scores in its bundle",
                 "signature does not verify", "failed", "dropped"):
        assert text in page, text
    doc = json.loads(json_path.read_text())
    rows = {r["site"]: r for r in doc["sites"]}
    assert rows["site-b"]["gain"]["p_value"] == 0.004 and rows["site-a"]["gain"] is None
    assert rows["site-a"]["quality"]["gan_train"]["auc"] == 0.91
    assert rows["site-b"]["quality"] is None and rows["site-e"]["pooled"] is None


def test_sample_grids_are_inline_pngs_per_class(tmp_path: Path) -> None:
    import numpy as np

    from coordinator.report import sample_grids

    images = np.zeros((6, 16, 16), np.uint8)
    grids = sample_grids(images, np.array([0, 1, 0, 1, 0, 1]), ["normal", "abnormal", "empty"])
    assert set(grids) == {"normal", "abnormal"}  # a class without images gets no row
    assert all(uri.startswith("data:image/png;base64,") for uri in grids.values())
    html_path, json_path = write_report(sample_report({"site-a": grids,
                                                       "site-x": {"bad": "https://x/y.png"}}),
                                        tmp_path)
    page = html_path.read_text()
    assert page.count("<img ") == 2 and "https://x" not in page  # nothing loads from outside
    assert "data:image/png" not in json_path.read_text()  # pictures: HTML only


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

    from coordinator.report import sample_grids

    # Black synthetic images: each class's grid is a black band 8 × 18 px × 3 wide on the page.
    grids = sample_grids(np.zeros((16, 16, 16), np.uint8), np.arange(16) % 2,
                         ["normal", "abnormal"])
    html_path, _ = write_report(sample_report({"site-a": grids, "site-b": grids}), tmp_path)
    shot = tmp_path / "report.png"
    subprocess.run([str(chromium_path()), "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1200,2400",
                    html_path.as_uri()], check=True, capture_output=True, timeout=120)
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    img = rgb.mean(axis=2)
    assert img.shape == (2400, 1200)
    # The per-site table: its header cells' #f6f7f9 background spans most of the page width.
    header = (np.abs(rgb - np.array([0xF6, 0xF7, 0xF9])).sum(axis=2) == 0).sum(axis=1)
    assert header.max() > 600
    # The sample grids: black rectangles of at least 150 × 40 px (no text is that solid).
    dark = img < 30
    rows_with_band = (dark.sum(axis=1) > 150).sum()
    assert rows_with_band >= 4 * 40, rows_with_band
    # Not a blank page: text and the CI plot put dark pixels in the upper and the lower half.
    assert (img[:1200] < 100).mean() > 0.002 and (img[1200:] < 100).mean() > 0.001


def test_lesion_mode_shows_macro_auc_and_a_per_class_table(tmp_path: Path) -> None:
    per_class = {"No finding": 0.91, "Surgical implant": 0.99, "Vertebral collapse": None}
    rec = {**_rec(0.9), "classes": "lesion", "per_class_auc": per_class}
    report = build_report(run="r", sites={"site-a": {"status": "ok", "baseline": rec,
                                                     "pooled": rec}},
                          pool=None, cnn=None)
    page = write_report(report, tmp_path)[0].read_text()
    assert "Macro AUC (one vs rest) per site" in page
    assert "Per-class AUC" in page and "Surgical implant" in page and "0.990" in page


def test_a_sites_resize_record_reaches_the_report_reduced_to_its_two_sides() -> None:
    """What a peer wrote about resizing its test images: two sides or nothing."""
    from shared.report_verify import resize_view as _resize_of

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


def test_hostile_gain_and_quality_numbers_do_not_break_the_page(tmp_path: Path) -> None:
    """A site signs its own numbers: strings, NaN and markup in them are shown as '–'."""
    pooled = {**_rec(0.9), "paired_vs_local": {"delta": 0.1, "p_value": "<b>0</b>",
                                               "ci_low": float("nan"), "auc_a": "x",
                                               "test": "<script>t</script>"}}
    bad_q = {"gan_train": {"auc": "<i>1</i>", "ci_low": None}, "distribution": {
        "fd": "NaN", "precision": [1], "encoder": "<script>e</script>"}}
    sites = {"site-a": {"status": "ok", "baseline": _rec(0.8), "pooled": pooled,
                        "bundle": {"site": "site-a", "metrics": {"synthetic-quality": bad_q}}},
             "site-b": {"status": "ok", "baseline": _rec(0.8), "pooled": {
                 **_rec(0.9), "paired_vs_local": {"delta": "big"}}}}
    page = write_report(build_report(run="r", sites=sites, pool=None, cnn=None),
                        tmp_path)[0].read_text()
    assert "site-a: +0.10 AUC by joining (– → –)" in page
    assert "<script>" not in page and "<i>1</i>" not in page and "<b>0</b>" not in page
    assert "site-b: " not in page.split("Gain by joining")[1].split("</ul>")[0]


def test_own_column_falls_back_to_the_sites_signed_gan_train_score() -> None:
    """Without coordinator-side own-synthetic CNNs (the demo), the "own synthetic" column shows
    the GAN-train AUC the site signed into its bundle; a hostile, non-numeric one is dropped."""
    bundle = {"metrics": {"synthetic-quality": QUALITY}}
    hostile = {"metrics": {"synthetic-quality": {"gan_train": {"auc": "<script>", "n_test": 9}}}}
    report = build_report(run="r", pool=None, cnn=None, sites={
        "site-a": {"status": "ok", "baseline": _rec(0.9), "pooled": _rec(0.85), "bundle": bundle},
        "site-b": {"status": "ok", "baseline": _rec(0.9), "pooled": _rec(0.85), "bundle": hostile},
        "site-c": {"status": "ok", "baseline": _rec(0.9), "own": _rec(0.7), "bundle": bundle}})
    rows = {r["site"]: r for r in report["sites"]}
    assert rows["site-a"]["own"]["auc"] == 0.91 and rows["site-a"]["own"]["n_test"] == 80
    assert "GAN-train" in rows["site-a"]["own"]["source"]
    assert rows["site-b"]["own"] is None
    assert rows["site-c"]["own"]["auc"] == 0.7  # a coordinator-side CNN wins when present
    assert "0.910" in render_html(report)


def test_the_pooled_cell_says_how_the_site_chose_among_candidates(tmp_path: Path) -> None:
    """Each site narrows the coordinator's candidate CNNs on its train split and signs how;
    the table says so, and a hostile record (markup, strings) cannot break the page."""
    chosen = {**_rec(0.9), "selection": {"candidates": 9, "picked": [4, 1, 4], "split": "train",
                                         "n_images": 520,
                                         "rule": "greedy forward selection"}}
    hostile = {**_rec(0.8), "selection": {"candidates": "<b>9</b>", "picked": "<i>x</i>",
                                          "rule": "<script>s</script>"}}
    default = {**_rec(0.7), "selection": {"candidates": 9, "picked": [2, 5], "split": None,
                                          "rule": "<script>d</script>"}}
    sites = {"site-a": {"status": "ok", "baseline": _rec(0.8), "pooled": chosen},
             "site-b": {"status": "ok", "baseline": _rec(0.8), "pooled": hostile},
             "site-c": {"status": "ok", "baseline": _rec(0.8), "pooled": default}}
    page = write_report(build_report(run="r", sites=sites, pool=None, cnn=None),
                        tmp_path)[0].read_text()
    assert "2 of 9 candidates, chosen on 520 train images" in page
    assert "2 of 9 candidates, chosen by the coordinator&#x27;s default" in page \
        or "2 of 9 candidates, chosen by the coordinator's default" in page
    assert "<script>" not in page and "<b>9</b>" not in page and "<i>x</i>" not in page


def test_the_local_cell_says_whose_recipe_trained_the_yardstick(tmp_path: Path) -> None:
    """A site signs who chose its baseline's recipe and how long it trained; the table shows
    both, so a coordinator-chosen or 20-step yardstick is visible. Hostile values print
    nothing."""
    sites = {"site-a": {"status": "ok", "pooled": _rec(0.9),
                        "baseline": {**_rec(0.8), "recipe": "site", "optimizer_steps": 412}},
             "site-b": {"status": "ok", "pooled": _rec(0.9),
                        "baseline": {**_rec(0.7), "recipe": "request", "optimizer_steps": 20}},
             "site-c": {"status": "ok", "pooled": _rec(0.9),
                        "baseline": {**_rec(0.6), "recipe": {"x": 1},
                                     "optimizer_steps": 1e300}},
             "site-d": {"status": "ok", "pooled": _rec(0.9),
                        "baseline": {**_rec(0.6), "recipe": "<script>r</script>",
                                     "optimizer_steps": 2.5}}}
    doc = build_report(run="r", sites=sites, pool=None, cnn=None)
    assert doc["sites"][1]["baseline"]["recipe"] == "request"  # kept in report.json
    page = write_report(doc, tmp_path)[0].read_text()
    assert "the site&#x27;s own recipe, 412 steps" in page or "the site's own recipe, 412 steps" \
        in page
    assert "the coordinator&#x27;s recipe, 20 steps" in page or "the coordinator's recipe, " \
        "20 steps" in page
    assert "<script>" not in page and page.count(" steps</small>") == 2


def test_a_selection_count_that_is_no_count_is_not_printed(tmp_path: Path) -> None:
    """n_images from a peer: 1e300 printed 300 digits, -8 printed "chosen on -8 images"."""
    rows = {}
    for i, n in enumerate((1e300, -8, 520.5, True)):
        rows[f"site-{i}"] = {"status": "ok", "baseline": _rec(0.8), "pooled": {
            **_rec(0.9), "selection": {"candidates": 9, "picked": [1], "split": "train",
                                       "n_images": n}}}
    page = write_report(build_report(run="r", sites=rows, pool=None, cnn=None),
                        tmp_path)[0].read_text()
    assert page.count("1 of 9 candidates, chosen on – train images") == 4


def test_the_pooled_cell_says_which_round_the_picks_came_from(tmp_path: Path) -> None:
    """A two-round run's candidates carry their round; the site signs the round of each pick
    and the cell counts distinct picks per round. Anything else a peer puts there (a round 3,
    strings, a list of another length) shows no round counts at all."""
    honest = {"candidates": 8, "picked": [4, 1, 4], "picked_rounds": [2, 1, 2],
              "split": "train", "n_images": 520}
    rows = {"site-a": {"status": "ok", "baseline": _rec(0.8),
                       "pooled": {**_rec(0.9), "selection": honest}}}
    for i, bad in enumerate(([2, 1], [3, 1, 3], ["2", "1", "2"], [True, 1, True], "2,1,2")):
        rows[f"site-{i}"] = {"status": "ok", "baseline": _rec(0.8), "pooled": {
            **_rec(0.9), "selection": {**honest, "picked_rounds": bad}}}
    report = build_report(run="r", sites=rows, pool=None, cnn=None)
    by_site = {r["site"]: r for r in report["sites"]}
    assert by_site["site-a"]["pooled"]["selection"]["from_round"] == {"1": 1, "2": 1}
    assert all("from_round" not in by_site[f"site-{i}"]["pooled"]["selection"]
               for i in range(5))
    page = write_report(report, tmp_path)[0].read_text()
    assert page.count("(1 from round 1, 1 from round 2)") == 1
