"""The run's phases over the in-process transport (no Flower): a Flower error reply is a
dropout, and a re-run with the same name continues instead of starting over."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coordinator.local_transport import LocalTransport
from coordinator.phases import Run, settings_from_run_config
from shared.protocol import Outcome
from tests.coordinator.fedutil import audited_stand_in, make_keyed_site, trust_folder


class FlakyTransport(LocalTransport):
    """Node 2 answers every round except ``evaluate``, where Flower reports it unavailable."""

    def exchange(self, kind: str, requests: Mapping[int, dict[str, Any]],
                 weights: Mapping[int, dict[str, bytes]] | None,
                 timeout: float) -> dict[int, Outcome]:
        out = super().exchange(kind, {n: r for n, r in requests.items()
                                      if not (kind == "evaluate" and n == 2)}, weights, timeout)
        if kind == "evaluate" and 2 in requests:
            out[2] = Outcome(2, error="Flower error code 5: Node Unavailable")
        return out


def test_error_reply_is_a_dropout_and_rerun_resumes(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    sites = {name: make_keyed_site(tmp_path / "sites", name, n=60, size=16, seed=i)
             for i, name in enumerate(("site-a", "site-b"))}
    for i, site in enumerate(sites.values()):
        audited_stand_in(site, i, n=20)
    trust = trust_folder(tmp_path, sites)
    cfg = {"work-dir": str(tmp_path / "work"), "trust-dir": str(trust), "mode": "collect",
           "expected-sites": 2, "cnn-epochs": 1, "cnn-width": 8, "cnn-batch": 16,
           "n-boot": 200, "own-synthetic": False, "node-wait-s": 1.0}
    # 16-px phantoms look alike, so the audit's copy gate fails; each admin overrides it.
    node_cfg = {name: {"site-dir": str(site), "accept-risk": "test stand-ins: 16 px phantoms "
                       "look alike; no patient exists"} for name, site in sites.items()}
    logs: list[str] = []
    first = Run(settings_from_run_config({**cfg, "stop-after": "train"}),
                FlakyTransport(node_cfg), log=logs.append)
    first.execute()
    assert first.state.completed_phases("run") == ["bundles", "pool", "round2", "train"]
    again = Run(settings_from_run_config(cfg), FlakyTransport(node_cfg), log=logs.append)
    report = again.execute()
    assert any("resuming run run" in line for line in logs)
    assert again.state.completed_phases("run")[-1] == "report"
    statuses = again.state.site_statuses("run")
    assert statuses["site-a"]["status"] == "ok"
    assert statuses["site-b"] == {"status": "dropped",
                                  "reason": "evaluation round: Flower error code 5: Node "
                                            "Unavailable"}
    assert Path(report["html"]).exists()
