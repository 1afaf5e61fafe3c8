"""The eight lesion classes end to end (issue 15), over the in-process transport and over
files: sites that each lack some class, bundles → pool → CNN → per-site evaluation → report
with macro AUC and a per-class table in which a class a site lacks reads "absent"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from shared.vocabulary import LESION_CLASSES
from tests.coordinator.fedutil import (
    answer_requests,
    collect_config,
    lesion_site,
    stand_in_lesions,
    trust_folder,
)

# Site b has Spondylolisthesis, which site a lacks; a has two classes b lacks.
SITES = {"site-a": ("No finding", "Surgical implant", "Vertebral collapse"),
         "site-b": ("No finding", "Spondylolisthesis")}


def _sites(root: Path) -> dict[str, Path]:
    return {name: lesion_site(root / "sites", name, lesions, n=48, size=16, seed=i)
            for i, (name, lesions) in enumerate(SITES.items())}


def _audited(site: Path, name: str, seed: int) -> None:
    """``site/synthetic/default`` (stand-in phantoms of the site's own classes) + its audit."""
    from node.audit import run_audit
    from node.audit.config import AuditConfig

    stand_in_lesions(30, 16, seed, SITES[name]).save(site / "synthetic" / "default")
    run_audit(site, cfg=AuditConfig(encoder="none", n_boot=200, min_heldout=5), progress=False)


def _check_report(report: dict[str, Any], page: str) -> None:
    by_site = {r["site"]: r for r in report["sites"]}
    for name, lesions in SITES.items():
        rec = by_site[name]["pooled"]
        assert by_site[name]["status"] == "ok" and rec["verified"]
        assert rec["classes"] == "lesion" and rec["class_names"] == list(LESION_CLASSES)
        assert rec["class_ids"] == list(range(8))
        assert rec["absent_classes"] == [c for c in LESION_CLASSES if c not in lesions]
        per = rec["per_class_auc"]
        assert all(per[c] is None for c in rec["absent_classes"])
        assert all(isinstance(per[c], float) for c in lesions)
    assert "Per-class AUC" in page and "absent" in page and "Spondylolisthesis" in page


def test_lesion_classes_over_the_in_process_transport(tmp_path: Path) -> None:
    import torch

    from coordinator.local_transport import LocalTransport
    from coordinator.phases import Run, settings_from_run_config

    torch.set_num_threads(1)
    sites = _sites(tmp_path)
    for i, (name, site) in enumerate(sites.items()):
        _audited(site, name, i)
    trust = trust_folder(tmp_path, sites)
    cfg, node_cfg = collect_config(tmp_path, trust, sites)
    report = Run(settings_from_run_config(cfg), LocalTransport(node_cfg)).execute()
    pool = json.loads((tmp_path / "work" / "pool" / "pool.json").read_text())
    assert pool["class_names"] == list(LESION_CLASSES) and pool["class_ids"] == list(range(8))
    assert pool["counts"]["Spondylolisthesis"] > 0  # only site b sent it
    full = json.loads(Path(report["json"]).read_text())
    _check_report(full, Path(report["html"]).read_text())


def test_lesion_classes_over_files_and_a_mismatched_site_refused(tmp_path: Path) -> None:
    import torch

    from shared.cli import app
    from tests.coordinator.test_pool import make_bundle

    torch.set_num_threads(1)
    runner = CliRunner()
    sites = _sites(tmp_path)
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    for i, (name, site) in enumerate(sites.items()):
        shutil.copytree(site / "keys", tmp_path / "keys" / name, dirs_exist_ok=True)
        made = make_bundle(tmp_path, name, synthetic=stand_in_lesions(30, 16, i, SITES[name]))
        shutil.move(made, bundles / f"{name}.slbundle")
    trust = trust_folder(tmp_path, sites)
    # A third site still on the binary class list: refused at the pool, both lists named.
    odd = make_bundle(tmp_path, "site-c", seed=9, trust=trust)
    shutil.move(odd, bundles / "site-c.slbundle")
    work = tmp_path / "coord"
    res = runner.invoke(app, ["coordinator", "pool", str(bundles), "--trust", str(trust),
                              "--work", str(work)])
    assert res.exit_code == 0, res.output
    pool = json.loads((work / "pool" / "pool.json").read_text())
    assert pool["class_names"] == list(LESION_CLASSES) and pool["class_ids"] == list(range(8))
    (rej,) = pool["rejected"]
    assert rej["reason"] == "class-mismatch" and "[0:normal, 1:abnormal]" in rej["message"]
    assert "[0:No finding, 1:Disc space narrowing" in rej["message"]
    res = runner.invoke(app, ["coordinator", "train", "--work", str(work), "--epochs", "1",
                              "--width", "8", "--n-boot", "200"])
    assert res.exit_code == 0, res.output
    replies = tmp_path / "replies"
    answer_requests(work, sites, replies)
    res = runner.invoke(app, ["coordinator", "report", "--replies", str(replies), "--work",
                              str(work), "--trust", str(trust)])
    assert res.exit_code == 0, res.output
    report = json.loads((work / "report" / "report.json").read_text())
    assert report["transport"] == "files"
    _check_report(report, (work / "report" / "report.html").read_text())
    from shared.weights_io import load_weights

    weights = work / "cnn" / "pooled-cnn.npz"
    meta = load_weights(weights)[1]
    assert meta["class_names"] == list(LESION_CLASSES) and meta["class_ids"] == list(range(8))
