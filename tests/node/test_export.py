"""Export: what leaves the site is signed, gated by the audit, and free of PHI."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from node.audit import AuditConfig, run_audit
from node.export import ExportError, export_bundle
from shared.bundle import verify_bundle
from shared.signing import PUBLIC_NAME, KeyMissingError, generate_keypair
from shared.synthetic import SyntheticSet

AUDIT = AuditConfig(encoder="none", min_heldout=5, n_boot=100)


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    """A site ingested from phantom DICOMs full of fake PHI, with keys, metrics and a set."""
    from node.ingest import preprocess
    from node.phantoms import make_sites

    src = make_sites(tmp_path / "src", sites=1, scale=0.3, size=128)[0]
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    # A fixed salt pins the patient split: with a random one the held-out set of this small
    # site is sometimes too small for the audit's copy threshold.
    (site_dir / "salt").write_text("export-test-salt")
    preprocess(src / "dicom", src / "labels.csv", site_dir, size=32, progress=False, workers=1)
    generate_keypair(site_dir / "keys")
    (site_dir / "keys" / "pseudonym").write_text("site-a\n")
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "site-a.pub").write_bytes((site_dir / "keys" / PUBLIC_NAME).read_bytes())
    (site_dir / "metrics").mkdir()
    (site_dir / "metrics" / "baseline.json").write_text(json.dumps({
        "kind": "local_real_baseline", "auc": 0.91, "ci_low": 0.85, "ci_high": 0.96,
        "n_train": 45, "n_test": 15, "weights": str(site_dir / "metrics" / "cnn.npz")}))
    run = site_dir / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({
        "img_per_s": 120.0, "kimg": 1.0,
        "dp": {"epsilon_spent": 7.5, "delta": 0.02, "noise_multiplier": 0.9, "steps": 40}}))
    (run / "config.json").write_text(json.dumps({"model": "gan", "kimg": 1.0,
                                                 "dp_epsilon": 8.0}))
    return {"site": site_dir, "src": src, "trust": trust, "tmp": tmp_path}


def honest_set(site_dir: Path, n: int = 40) -> SyntheticSet:
    from node.phantoms import LESION_CLASSES, render

    rng = np.random.default_rng(5)
    imgs = np.stack([np.clip(np.rint(render(rng, LESION_CLASSES[i % 2], 32) * 255), 0, 255)
                     .astype(np.uint8) for i in range(n)])
    syn = SyntheticSet(imgs, np.arange(n) % 2, ["normal", "abnormal"],
                       {"run_name": "r1", "truncation": 1.0, "seed": 0})
    syn.save(site_dir / "synthetic" / "default")
    return syn


def members(path: Path) -> list[bytes]:
    with zipfile.ZipFile(path) as zf:
        return [zf.read(n) for n in zf.namelist()]


def test_no_phi_or_file_name_in_any_byte_of_the_bundle(site: dict[str, Path]) -> None:
    from node.phantoms import phi_strings
    from node.store import SiteStore

    honest_set(site["site"])
    run_audit(site["site"], cfg=AUDIT, progress=False)
    out = site["tmp"] / "site-a.slbundle"
    manifest = export_bundle(site["site"], out)
    phi = phi_strings(site["src"] / "dicom")
    assert len(phi) > 20  # the fixture really carries PHI
    ids = {s.image_id for s in SiteStore.open(site["site"]).samples()}
    blobs = [out.read_bytes(), *members(out)]
    for needle in sorted(phi | ids):
        for blob in blobs:
            assert needle.encode().lower() not in blob.lower(), needle
    vb = verify_bundle(out, site["trust"])
    assert vb.site == "site-a" and vb.bundle_id == manifest["bundle_id"]
    m = vb.manifest
    assert m["metrics"]["baseline"]["auc"] == 0.91
    assert "weights" not in m["metrics"]["baseline"]  # a path: dropped
    assert m["dp"]["epsilon_spent"] == 7.5 and m["audit"]["gates_passed"]
    assert m["config"]["gan"]["dp_epsilon"] == 8.0 and m["accepted_risk"] is None
    assert not any(b"LOCAL ONLY" in blob for blob in blobs)
    log = (site["site"] / "exports.jsonl").read_text().splitlines()
    assert json.loads(log[-1])["bundle_id"] == manifest["bundle_id"]


def test_failed_gate_refuses_export_unless_risk_is_accepted(site: dict[str, Path]) -> None:
    from node.store import SiteStore

    train, _ = SiteStore.open(site["site"]).load("train")
    SyntheticSet(train[:30].copy(), np.arange(30) % 2, ["normal", "abnormal"],
                 {"run_name": "r1"}).save(site["site"] / "synthetic" / "default")
    summary = run_audit(site["site"], cfg=AUDIT, progress=False)
    assert not summary["gates_passed"]
    out = site["tmp"] / "b.slbundle"
    with pytest.raises(ExportError, match="--accept-risk"):
        export_bundle(site["site"], out)
    assert not out.exists()
    with pytest.raises(ExportError, match="real reason"):
        export_bundle(site["site"], out, accept_risk="ok")
    why = "research copy for the ethics board, never pooled"
    export_bundle(site["site"], out, accept_risk=why)
    vb = verify_bundle(out, site["trust"])
    assert vb.manifest["accepted_risk"]["reason"] == why
    assert "copy_rate" in vb.manifest["accepted_risk"]["failed_gates"]


def test_stale_or_missing_audit_and_missing_keys(site: dict[str, Path]) -> None:
    out = site["tmp"] / "c.slbundle"
    syn = honest_set(site["site"])
    with pytest.raises(ExportError, match="node audit"):
        export_bundle(site["site"], out)
    run_audit(site["site"], cfg=AUDIT, progress=False)
    SyntheticSet(syn.images[::-1].copy(), syn.labels, syn.class_names, syn.info).save(
        site["site"] / "synthetic" / "default")
    with pytest.raises(ExportError, match="again"):
        export_bundle(site["site"], out)
    run_audit(site["site"], cfg=AUDIT, progress=False)
    with pytest.raises(KeyMissingError, match="keygen"):
        export_bundle(site["site"], out, key_dir=site["tmp"] / "no-keys")
    export_bundle(site["site"], out)
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(site["site"], out)


def test_reader_study_summary_is_signed_into_the_bundle(site: dict[str, Path]) -> None:
    from node.audit import synthetic_digest

    syn = honest_set(site["site"])
    run_audit(site["site"], cfg=AUDIT, progress=False)
    summary = {"kind": "reader_study", "synthetic_sha256": synthetic_digest(syn),
               "readers_finished": 2, "verdict": "readers could not tell them apart: accuracy "
               "0.53 [0.43, 0.62]", "pooled": {"accuracy": {"k": 53, "n": 100, "value": 0.53}}}
    (site["site"] / "metrics" / "reader_study.json").write_text(json.dumps(summary))
    out = site["tmp"] / "rs.slbundle"
    export_bundle(site["site"], out)
    rs = verify_bundle(out, site["trust"]).manifest["metrics"]["reader_study"]
    assert rs["verdict"] == summary["verdict"] and rs["pooled"]["accuracy"]["value"] == 0.53
    assert rs["matches_bundle_set"] is True
    summary["synthetic_sha256"] = "0" * 64  # a study run on another set says so
    (site["site"] / "metrics" / "reader_study.json").write_text(json.dumps(summary))
    export_bundle(site["site"], out, overwrite=True)
    assert verify_bundle(out, site["trust"]).manifest["metrics"]["reader_study"][
        "matches_bundle_set"] is False
    # … and the coordinator's report shows the signed study once the bundle is pooled.
    from coordinator.pool import pool_bundles
    from coordinator.report import build_report, render_html
    from coordinator.state import CoordinatorState

    pool = pool_bundles([out], site["trust"], CoordinatorState(site["tmp"] / "state.db"))
    page = render_html(build_report(run="r", sites={}, pool=pool.summary(), cnn=None))
    assert "Reader studies" in page and summary["verdict"] in page and "another set" in page
