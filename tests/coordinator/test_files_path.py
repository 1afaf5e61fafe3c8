"""The air-gapped path through the real CLI: pool → train → request files → node evaluate
--request → report, with the same bundle checks and signed replies as over Flower."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from shared.cli import app
from tests.coordinator.fedutil import make_keyed_site, stand_in_synthetic, trust_folder
from tests.coordinator.test_pool import make_bundle, tamper


def test_air_gapped_pool_train_request_reply_report(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    runner = CliRunner()
    bundles, sites = tmp_path / "bundles", {}
    for i, name in enumerate(("site-a", "site-b")):
        site = make_keyed_site(tmp_path, name, n=40, size=16, seed=i)
        sites[name] = site
        # What the site exported (stand-in synthetic images: the path under test is the files)
        shutil.copytree(site / "keys", tmp_path / "keys" / name, dirs_exist_ok=True)
        made = make_bundle(tmp_path, name, synthetic=stand_in_synthetic(24, 16, i))
        bundles.mkdir(exist_ok=True)
        shutil.move(made, bundles / f"{name}.slbundle")
    trust = trust_folder(tmp_path, sites)
    bad = make_bundle(tmp_path, "site-c", seed=9, trust=trust)
    tamper(bad)
    shutil.move(bad, bundles / "site-c.slbundle")
    work = tmp_path / "coord"

    res = runner.invoke(app, ["coordinator", "pool", str(bundles), "--trust", str(trust),
                              "--work", str(work)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["coordinator", "train", "--work", str(work), "--epochs", "2",
                              "--width", "8", "--n-boot", "200"])
    assert res.exit_code == 0, res.output
    replies = tmp_path / "replies"
    replies.mkdir()
    for name, site in sites.items():
        req = work / "requests" / name / "request.json"
        assert req.exists()
        res = runner.invoke(app, ["node", "evaluate", "--request", str(req), "--site-dir",
                                  str(site)])
        assert res.exit_code == 0, res.output
        shutil.copy(req.parent / f"reply-{name}.json", replies)
    res = runner.invoke(app, ["coordinator", "report", "--replies", str(replies), "--work",
                              str(work), "--trust", str(trust)])
    assert res.exit_code == 0, res.output
    report = json.loads((work / "report" / "report.json").read_text())
    by_site = {r["site"]: r for r in report["sites"]}
    assert by_site["site-c"]["status"] == "excluded"
    assert "hash-mismatch" in by_site["site-c"]["reason"]
    for name in sites:
        assert by_site[name]["status"] == "ok"
        assert by_site[name]["pooled"]["verified"] and by_site[name]["own"]["verified"]
    assert report["transport"] == "files"
