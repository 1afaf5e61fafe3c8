"""Two rounds under DP through the real site code (in-process transport): every site's
privacy ledger counts both rounds, stays within its lifetime ε, and its round-2 bundle says
so in its signed manifest; a further round is refused before training."""

from __future__ import annotations

import json
from pathlib import Path

from coordinator.local_transport import LocalTransport
from coordinator.phases import Run, settings_from_run_config
from tests.coordinator.fedutil import make_keyed_site, trust_folder

RISK = "test sites: 16 px phantoms look alike; no patient exists"


def test_two_dp_rounds_stay_within_each_sites_lifetime_epsilon(tmp_path: Path) -> None:
    import torch

    from node.privacy_ledger import entries, spent
    from shared.bundle import verify_bundle

    torch.set_num_threads(1)
    sites = {name: make_keyed_site(tmp_path / "sites", name, n=80, size=16, seed=i)
             for i, name in enumerate(("site-a", "site-b"))}
    for site in sites.values():  # small test splits: the audit's calibration makes do
        (site / "site.toml").write_text('[audit]\nmin_heldout = 5\nencoder = "none"\n'
                                        'n_boot = 200\n')
    trust = trust_folder(tmp_path, sites)
    gan = {"kimg": 0.1, "dp_epsilon": 7.0, "batch": 8, "min_class_images": 4}
    cfg = {"work-dir": str(tmp_path / "work"), "trust-dir": str(trust), "mode": "train",
           "rounds": 2, "gan-config": json.dumps(gan),
           "round2-gan-config": json.dumps({"dp_epsilon": 3.0, "init_pretrain_kimg": 0.1}),
           "baseline-config": json.dumps({"epochs": 1, "width": 8}), "n-synthetic": 16,
           "expected-sites": 2, "node-wait-s": 1.0, "stop-after": "round2"}
    # The admins take the coordinator's 1-epoch baseline recipe: this test is about ε.
    node_cfg = {name: {"site-dir": str(site), "allow-train": True, "require-dp": True,
                       "lifetime-epsilon": 10.0, "accept-risk": RISK,
                       "baseline-recipe": "request"}
                for name, site in sites.items()}
    run = Run(settings_from_run_config(cfg), LocalTransport(node_cfg))
    run.execute()
    result = run.state.phase_result("run", "round2") or {}
    assert {a["site"]: a["round"] for a in result["accepted"]} == {"site-a": "2",
                                                                   "site-b": "2"}
    for name, site in sites.items():
        runs = [e["run"] for e in entries(site)]
        assert runs == ["run", "run-round2"]  # both rounds, each once
        eps = spent(site)[0]
        assert 9.0 < eps <= 10.0 + 1e-6
        path = next(a["path"] for a in result["accepted"] if a["site"] == name)
        ledger = verify_bundle(Path(path), trust).manifest["privacy_ledger"]
        assert ledger["cumulative_epsilon"] == eps and ledger["lifetime_epsilon"] == 10.0

    # A third DP training at this site would pass its lifetime ε: refused before training.
    again = Run(settings_from_run_config({**cfg, "run-name": "later", "work-dir":
                                          str(tmp_path / "work2")}),
                LocalTransport(node_cfg))
    out = again.t.exchange("train", {1: {"protocol": 1, "action": "export-bundle",
                                         "run-tag": "later", "mode": "train",
                                         "gan-config": json.dumps(gan)}}, None, 60.0)
    assert out[1].config["status"] != "ok"
    assert "lifetime ε = 10" in out[1].config["reason"]
    assert not (sites["site-a"] / "runs" / "later").exists()
