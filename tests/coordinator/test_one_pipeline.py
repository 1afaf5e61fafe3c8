"""The air-gapped commands and an in-process run are one pipeline: fed the same three signed
bundles, they pool the same images, train the same CNN and report the same verified AUCs and
site statuses (they once drifted: other CNN defaults, another status for a silent site)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from typer.testing import CliRunner

from coordinator.local_transport import LocalTransport
from coordinator.phases import Run, settings_from_run_config
from shared.cli import app
from shared.protocol import PROTOCOL, Outcome
from tests.coordinator.fedutil import audited_stand_in, make_keyed_site, trust_folder

SITES = ("site-a", "site-b", "site-c")
RISK = "test stand-ins: 16 px phantoms look alike; no patient exists"


class PrebuiltBundles(LocalTransport):
    """Sites answer pings and evaluations in-process; the bundle round returns the bundles
    the sites exported earlier (the same files the air-gapped path pools)."""

    def __init__(self, sites: Mapping[str, Mapping[str, Any]], bundles: dict[str, Path]):
        super().__init__(sites)
        self.bundles = bundles
        self.names = {i + 1: name for i, name in enumerate(sites)}

    def exchange(self, kind: str, requests: Mapping[int, dict[str, Any]],
                 weights: Mapping[int, dict[str, bytes]] | None,
                 timeout: float) -> dict[int, Outcome]:
        if kind != "train":
            return super().exchange(kind, requests, weights, timeout)
        return {n: Outcome(n, config={"protocol": PROTOCOL, "action": "export-bundle",
                                      "status": "ok", "site": self.names[n]},
                           bundle=self.bundles[self.names[n]].read_bytes())
                for n in requests}


def _site_with_bundle(root: Path, name: str, seed: int) -> tuple[Path, Path]:
    from node.export import export_bundle

    site = make_keyed_site(root / "sites", name, n=60, size=16, seed=seed)
    audited_stand_in(site, seed)
    bundle = root / "carried" / f"{name}.slbundle"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    export_bundle(site, bundle, accept_risk=RISK, site=name, key_dir=site / "keys")
    return site, bundle


def _essentials(report: dict[str, Any]) -> dict[str, Any]:
    def auc(rec: dict[str, Any] | None) -> Any:
        return None if rec is None else (rec["auc"], rec["ci_low"], rec["ci_high"])

    return {
        "sites": {r["site"]: (r["status"], auc(r.get("pooled")), auc(r.get("own")))
                  for r in report["sites"]},
        "pool": {k: report["pool"][k] for k in ("images", "counts", "class_names",
                                                "duplicates_dropped", "balanced_dropped")},
        "pooled_sites": sorted(a["site"] for a in report["pool"]["accepted"]),
    }


def test_air_gapped_and_in_process_give_the_same_report(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    made = {name: _site_with_bundle(tmp_path, name, i) for i, name in enumerate(SITES)}
    sites = {name: site for name, (site, _) in made.items()}
    bundles = {name: bundle for name, (_, bundle) in made.items()}
    trust = trust_folder(tmp_path, sites)

    # In-process (the code a Flower run executes), collect mode, CNN settings as below.
    node_cfg = {name: {"site-dir": str(site)} for name, site in sites.items()}
    cfg = {"work-dir": str(tmp_path / "inproc"), "trust-dir": str(trust), "mode": "collect",
           "expected-sites": 3, "cnn-epochs": 2, "cnn-width": 8, "n-boot": 200,
           "node-wait-s": 1.0}
    Run(settings_from_run_config(cfg), PrebuiltBundles(node_cfg, bundles),
        log=lambda _: None).execute()

    # Air-gapped: the same bundles, carried as files, through the commands.
    runner, work = CliRunner(), tmp_path / "files"
    for argv in (["coordinator", "pool", str(bundles["site-a"].parent), "--trust", str(trust),
                  "--work", str(work)],
                 ["coordinator", "train", "--work", str(work), "--epochs", "2", "--width", "8",
                  "--n-boot", "200"]):
        res = runner.invoke(app, argv)
        assert res.exit_code == 0, res.output + str(res.exception or "")
    replies = tmp_path / "replies"
    replies.mkdir()
    for name, site in sites.items():
        req = work / "requests" / name / "request.json"
        res = runner.invoke(app, ["node", "evaluate", "--request", str(req), "--site-dir",
                                  str(site)])
        assert res.exit_code == 0, res.output + str(res.exception or "")
        shutil.copy(req.parent / f"reply-{name}.json", replies)
    res = runner.invoke(app, ["coordinator", "report", "--replies", str(replies), "--work",
                              str(work), "--trust", str(trust)])
    assert res.exit_code == 0, res.output + str(res.exception or "")

    inproc = json.loads((tmp_path / "inproc" / "report" / "report.json").read_text())
    files = json.loads((work / "report" / "report.json").read_text())
    assert (inproc["transport"], files["transport"]) == ("in-process", "files")
    assert _essentials(files) == _essentials(inproc)
    assert {r["site"]: r["status"] for r in files["sites"]} == dict.fromkeys(SITES, "ok")
    pooled = [np.load(w / "pool" / "pooled" / "images.npy", allow_pickle=False)
              for w in (tmp_path / "inproc", work)]
    assert np.array_equal(*pooled)
