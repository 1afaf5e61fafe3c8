"""The privacy ledger: every DP run's spend appended, the total signed into every bundle and
shown by `audit verify`; the lifetime budget refuses what would go past it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from node.errors import LedgerError, PrivacyBudgetError
from node.privacy_ledger import (
    check_budget,
    entries,
    record_spend,
    remaining,
    spent,
    summary,
)


def test_spend_adds_up_under_basic_composition(tmp_path: Path) -> None:
    assert spent(tmp_path) == (0.0, 0.0) and remaining(tmp_path, 5.0) == 5.0
    record_spend(tmp_path, 2.0, 1e-5, run="a")
    record_spend(tmp_path, 1.5, 2e-5, run="b")
    assert spent(tmp_path) == (3.5, 3e-5)
    assert remaining(tmp_path, 5.0) == 1.5 and remaining(tmp_path, None) is None
    check_budget(tmp_path, 1.5, 5.0)  # exactly at the budget is allowed
    with pytest.raises(PrivacyBudgetError, match="a run at ε = 2 would exceed it"):
        check_budget(tmp_path, 2.0, 5.0)
    s = summary(tmp_path, 5.0)
    assert s["cumulative_epsilon"] == 3.5 and s["dp_runs"] == 2 and s["remaining_epsilon"] == 1.5


def test_a_damaged_ledger_stops_instead_of_under_counting(tmp_path: Path) -> None:
    record_spend(tmp_path, 2.0, 1e-5)
    with (tmp_path / "privacy-ledger.jsonl").open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(LedgerError, match=r"privacy-ledger\.jsonl:2: not a ledger entry"):
        spent(tmp_path)
    with pytest.raises(LedgerError, match="not a spend"):
        record_spend(tmp_path, float("nan"), 1e-5)


def test_a_dp_training_run_is_recorded_and_signed_into_the_next_bundle(
        tiny_site: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from node.audit import run_audit
    from node.audit.config import AuditConfig
    from node.export import export_bundle
    from node.generate import generate
    from node.training import train
    from shared.cli import app
    from shared.signing import generate_keypair
    from tests.node.test_dp_training import TINY

    train(tiny_site, replace(TINY, model="gan"), run_name="dp", progress=False)
    (spend,) = entries(tiny_site)
    metrics = json.loads((tiny_site / "runs" / "dp" / "metrics.json").read_text())
    assert spend["epsilon"] == pytest.approx(metrics["dp"]["epsilon_spent"])
    assert spend["run"] == "dp"
    record_spend(tiny_site, 1.25, 1e-5, run="earlier")
    generate(tiny_site, 20, run_name="dp")
    run_audit(tiny_site, cfg=AuditConfig(encoder="none", n_boot=100, min_heldout=5),
              progress=False)
    generate_keypair(tiny_site / "keys")
    out = tmp_path / "b.slbundle"
    manifest = export_bundle(tiny_site, out, accept_risk="test: tiny blobs look alike, no "
                             "patient exists", site="site-t", lifetime_epsilon=100.0)
    ledger = manifest["privacy_ledger"]
    total = spend["epsilon"] + 1.25
    assert ledger["cumulative_epsilon"] == pytest.approx(total) and ledger["dp_runs"] == 2
    assert ledger["remaining_epsilon"] == pytest.approx(100.0 - total)
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "site-t.pub").write_bytes((tiny_site / "keys" / "site.pub").read_bytes())
    r = CliRunner().invoke(app, ["audit", "verify", str(out), "--trust", str(trust)])
    assert f"privacy ledger: cumulative ε {ledger['cumulative_epsilon']}" in r.output
    assert "over 2 DP run(s), basic composition; lifetime budget 100.0" in r.output
