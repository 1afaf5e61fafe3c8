"""A hostile site, over the in-process transport (the SuperNodes' own handlers, no Flower).

Each site signs with its own trusted key, so it can sign anything: another site's name, an
old run's numbers, a string where a number belongs, script in every field it controls. The
coordinator must pin each record to the key's site and to this run and request, mark the
liar failed with the reason, finish the run for everyone else, and render nothing it sent as
markup. `synthlearn audit verify report.json --trust KEYS` must then check every number.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from coordinator.local_transport import LocalTransport
from coordinator.phases import Run, settings_from_run_config
from shared.protocol import Outcome
from tests.chromium import chromium_path
from tests.coordinator.fedutil import audited_stand_in, make_keyed_site, trust_folder

SCRIPT = "<script>document.body.setAttribute('data-'+'pw','xyz')</script>"
IMG = "<img src=x onerror=\"document.body.setAttribute('data-'+'pw','xyz')\">"


def _cfg(tmp: Path, trust: Path, **kw: Any) -> dict[str, Any]:
    """One work folder (state, bundles, report) per run name: runs do not share a report."""
    return {"work-dir": str(tmp / f"work-{kw.get('run-name', 'run')}"), "trust-dir": str(trust),
            "mode": "collect",
            "expected-sites": 2, "cnn-epochs": 1, "cnn-width": 8, "cnn-batch": 16,
            "n-boot": 200, "own-synthetic": False, "node-wait-s": 1.0, **kw}


def _node_cfg(sites: Mapping[str, Path]) -> dict[str, dict[str, Any]]:
    return {name: {"site-dir": str(site), "accept-risk": "test stand-ins: 16 px phantoms look "
                   "alike; no patient exists"} for name, site in sites.items()}


class Tamper(LocalTransport):
    """Answers honestly, then lets ``edit(kind, node, outcome)`` rewrite a reply."""

    def __init__(self, sites: Mapping[str, Mapping[str, Any]],
                 edit: Callable[[str, int, Outcome], None]) -> None:
        super().__init__(sites)
        self.edit = edit

    def exchange(self, kind: str, requests: Mapping[int, dict[str, Any]],
                 weights: Mapping[int, dict[str, bytes]] | None,
                 timeout: float) -> dict[int, Outcome]:
        out = super().exchange(kind, requests, weights, timeout)
        for node, o in out.items():
            self.edit(kind, node, o)
        return out


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two prepared sites and one honest run to completion (its report is real)."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fed")
    sites = {name: make_keyed_site(root / "sites", name, n=60, size=16, seed=i)
             for i, name in enumerate(("site-a", "site-b"))}
    from node.baseline import run_baseline
    from shared.cnn_train import ClassifierConfig

    for i, site in enumerate(sites.values()):
        audited_stand_in(site, i, n=20)
        run_baseline(site, ClassifierConfig(epochs=1, width=4, batch=16, patience=0),
                     progress=False)
    trust = trust_folder(root, sites)
    from node.privacy_ledger import record_spend

    record_spend(sites["site-a"], 3.25, 1e-5, run="an earlier DP run")
    run = Run(settings_from_run_config(_cfg(root, trust, **{"run-name": "honest"})),
              LocalTransport(_node_cfg(sites)), log=lambda _: None)
    report = run.execute()
    return {"root": root, "sites": sites, "trust": trust, "report": report, "state": run.state}


def _resign(record: dict[str, Any], site_dir: Path, **change: Any) -> dict[str, Any]:
    from shared.signing import sign_record

    return sign_record({**record["payload"], **change}, site_dir / "keys")


def _run(fed: dict[str, Any], name: str, edit: Callable[[str, int, Outcome], None],
         node_cfg: dict[str, dict[str, Any]] | None = None) -> Run:
    run = Run(settings_from_run_config(_cfg(fed["root"], fed["trust"], **{"run-name": name})),
              Tamper(node_cfg or _node_cfg(fed["sites"]), edit), log=lambda _: None)
    run.execute()
    return run


def _edit_eval(node_id: int, change: Callable[[dict[str, Any]], None]
               ) -> Callable[[str, int, Outcome], None]:
    def edit(kind: str, node: int, o: Outcome) -> None:
        if kind == "evaluate" and node == node_id:
            doc = json.loads(o.config["reply-json"])
            change(doc)
            o.config["reply-json"] = json.dumps(doc)
    return edit


# -- identity ------------------------------------------------------------------------------------
def test_a_reply_claiming_another_sites_name_is_refused(fed: dict[str, Any]) -> None:
    """site-b's node answers with records it signed saying they are site-a's."""
    b = fed["sites"]["site-b"]

    def claim_a(doc: dict[str, Any]) -> None:
        doc["evaluations"]["pooled"] = _resign(doc["evaluations"]["pooled"], b, site="site-a")

    run = _run(fed, "claim", _edit_eval(2, claim_a))
    rows = {r["site"]: r for r in json.loads(
        Path(run.state.phase_result("claim", "report")["json"]).read_text())["sites"]}
    assert rows["site-a"]["status"] == "ok" and rows["site-a"]["pooled"]["auc"] is not None
    assert rows["site-b"]["status"] == "failed" and rows["site-b"]["pooled"] is None
    assert any("claims site 'site-a' but is signed by the key of 'site-b'" in p
               for p in rows["site-b"]["problems"])


def test_a_ping_claiming_another_sites_name_is_excluded(fed: dict[str, Any]) -> None:
    cfg = _node_cfg(fed["sites"])
    cfg["site-b"]["site-name"] = "site-a"  # site-b's node, site-b's key, site-a's name
    run = Run(settings_from_run_config(_cfg(fed["root"], fed["trust"], **{
        "run-name": "impostor", "stop-after": "ping"})), LocalTransport(cfg),
        log=lambda _: None)
    assert run.sites() == {1: "site-a"}
    st = run.state.site_statuses("impostor")
    assert st["node #2"]["status"] == "excluded"
    assert "ping claiming site 'site-a'" in st["node #2"]["reason"]
    assert "signed by the key of 'site-b'" in st["node #2"]["reason"]


def test_a_changed_key_for_a_known_site_stops_the_run(fed: dict[str, Any],
                                                      tmp_path: Path) -> None:
    from coordinator.errors import KeyChangedError
    from coordinator.state import CoordinatorState

    work = tmp_path / "work"
    state = CoordinatorState(work / "state.db")
    state.upsert_site("site-a", "0000:" * 15 + "0000")
    cfg = {**_cfg(tmp_path, fed["trust"]), "stop-after": "ping"}
    run = Run(settings_from_run_config(cfg), LocalTransport(_node_cfg(fed["sites"])),
              state=state, log=lambda _: None)
    with pytest.raises(KeyChangedError, match=r"site 'site-a' now signs with key .* but this "
                       r"coordinator knows it by key 0000:"):
        run.sites()
    assert state.forget_site_key("site-a")
    run._sites = None
    assert sorted(run.sites().values()) == ["site-a", "site-b"]


# -- replay, types, malformed replies -----------------------------------------------------------
def test_a_reply_replayed_from_another_run_is_refused(fed: dict[str, Any]) -> None:
    old = fed["state"].evaluations("honest")["site-b"]["pooled"]["signed"]

    def replay(doc: dict[str, Any]) -> None:
        doc["evaluations"]["pooled"] = old  # genuine, signed, but for run 'honest'

    run = _run(fed, "replay", _edit_eval(2, replay))
    statuses = run.state.site_statuses("replay")
    evals = run.state.evaluations("replay")
    assert "pooled" not in evals.get("site-b", {})
    assert statuses["site-a"]["status"] == "ok"
    (problem,) = evals["site-b"]["problems"]["problems"]
    assert "signed for another run or request" in problem and "'honest'" in problem
    assert "a replayed record" in problem


def test_a_non_numeric_auc_and_a_malformed_reply_fail_that_site_only(
        fed: dict[str, Any]) -> None:
    b = fed["sites"]["site-b"]

    def string_auc(doc: dict[str, Any]) -> None:
        doc["evaluations"]["pooled"] = _resign(doc["evaluations"]["pooled"], b,
                                               auc="0.99" + SCRIPT)

    run = _run(fed, "nan", _edit_eval(2, string_auc))
    report = json.loads(Path(run.state.phase_result("nan", "report")["json"]).read_text())
    rows = {r["site"]: r for r in report["sites"]}
    assert rows["site-b"]["status"] == "failed" and rows["site-b"]["pooled"] is None
    assert any(p.startswith("pooled: auc ") and "0.99<script>" in p
               and "is not a number in [0.0, 1.0]" in p
               for p in rows["site-b"]["problems"])
    assert rows["site-a"]["status"] == "ok"
    page = Path(run.state.phase_result("nan", "report")["html"]).read_text()
    assert "<script" not in page

    def garbage(doc: dict[str, Any]) -> None:
        doc["evaluations"] = ["not", "an", "object"]

    run = _run(fed, "garbage", _edit_eval(2, garbage))
    st = run.state.site_statuses("garbage")
    assert st["site-a"]["status"] == "ok"
    assert st["site-b"]["status"] == "failed"
    assert "malformed evaluation reply (ProtocolError: reply from site-b: 'evaluations' is " \
           "not an object)" in st["site-b"]["reason"]
    # Resumed from its state, the run ends the same way (the verdict is not redone).
    again = Run(settings_from_run_config(_cfg(fed["root"], fed["trust"],
                                              **{"run-name": "garbage"})),
                LocalTransport(_node_cfg(fed["sites"])), log=lambda _: None)
    assert again.execute()["json"] and \
        again.state.site_statuses("garbage")["site-b"]["status"] == "failed"


def test_a_bundle_id_is_refused_in_any_later_run_under_the_same_name(
        fed: dict[str, Any], tmp_path: Path) -> None:
    from coordinator.pool import pool_bundles
    from coordinator.state import CoordinatorState
    from node.export import export_bundle

    state = CoordinatorState(tmp_path / "state.db")
    bundles = []
    for name, site in fed["sites"].items():
        bundles.append(tmp_path / f"{name}.slbundle")
        export_bundle(site, bundles[-1], accept_risk="test stand-ins: 16 px phantoms look "
                      "alike; no patient exists")
    first = pool_bundles(bundles, fed["trust"], state, "files")
    assert len(first.accepted) == 2
    again = pool_bundles(bundles, fed["trust"], state, "files")  # re-pool: same run
    assert len(again.accepted) == 2
    state.finish_phase("files", "train", {})  # the pool was used: this run is closed
    later = pool_bundles(bundles, fed["trust"], state, "files")
    assert not later.accepted and {r["reason"] for r in later.rejected} == {"replayed"}


def test_the_report_shows_each_sites_signed_cumulative_epsilon(fed: dict[str, Any]) -> None:
    doc = json.loads(Path(fed["report"]["json"]).read_text())
    ledgers = {a["site"]: a["privacy_ledger"] for a in doc["pool"]["accepted"]}
    assert ledgers["site-a"]["cumulative_epsilon"] == 3.25 and ledgers["site-a"]["dp_runs"] == 1
    assert ledgers["site-b"]["cumulative_epsilon"] == 0.0
    page = Path(fed["report"]["html"]).read_text()
    assert "Site's Σε" in page and "<td class='n'>3.25</td>" in page


# -- audit verify on the report ----------------------------------------------------------------
def _verify(report: Path, trust: Path) -> Any:
    from typer.testing import CliRunner

    from shared.cli import app

    return CliRunner().invoke(app, ["audit", "verify", str(report), "--trust", str(trust)])


@pytest.mark.parametrize("path, value", [
    (("sites", 0, "pooled", "auc"), 0.999),
    (("sites", 1, "baseline", "ci_low"), 0.0),
    (("sites", 0, "pooled", "n_test"), 4000),
    (("sites", 1, "utility_ratio"), 9.9),
    (("sites", 0, "pooled", "selection"), {"candidates": 3, "distinct": 3, "on_train": True,
                                           "n_images": 4800}),
    (("pool", "accepted", 0, "images"), 1_000_000),
    (("pool", "accepted", 1, "dp"), {"epsilon_spent": 0.1, "delta": 1e-9}),
    (("pool", "accepted", 0, "privacy_ledger"), {"cumulative_epsilon": 0.0}),
    (("pool", "accepted", 1, "metrics"), {"reader_study": {"pooled": {"accuracy": 0.5}}}),
])
def test_audit_verify_checks_every_number_in_a_real_report(
        fed: dict[str, Any], tmp_path: Path, path: tuple[Any, ...], value: Any) -> None:
    src = Path(fed["report"]["json"])
    ok = _verify(src, fed["trust"])
    assert ok.exit_code == 0, ok.output
    assert "every site-attested number in the report matches its signature" in \
        " ".join(ok.output.split())
    doc = json.loads(src.read_text())
    assert doc["sites"][1]["baseline"] is not None  # the sites ran baselines
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    bad = tmp_path / "report.json"
    bad.write_text(json.dumps(doc))
    r = _verify(bad, fed["trust"])
    assert r.exit_code == 1
    where = "$." + ".".join(f"{k}" if isinstance(k, str) else f"[{k}]" for k in path)
    where = where.replace(".[", "[")
    assert "VERDICT: FAILED" in r.output and where in " ".join(r.output.split()), r.output


# -- script in every site-controlled string -----------------------------------------------------
def hostile_report() -> dict[str, Any]:
    from coordinator.report import build_report

    rec = {"auc": SCRIPT, "ci_low": IMG, "ci_high": [1], "n_test": SCRIPT, "verified": True,
           "key_fingerprint": SCRIPT, "weights_sha256": IMG}
    sites = {SCRIPT: {"status": "failed", "reason": SCRIPT + IMG, "problems": [IMG],
                      "pooled": rec, "baseline": rec, "own": rec},
             IMG: {"status": "ok", "pooled": {"auc": 0.8, "ci_low": 0.7, "ci_high": 0.9}}}
    accepted = [{"site": SCRIPT, "bundle_id": IMG, "images": SCRIPT,
                 "counts": {SCRIPT: IMG, IMG: SCRIPT}, "key_fingerprint": IMG,
                 "audit": {"gates_passed": True, "gates": {SCRIPT: {"note": IMG},
                                                           IMG: {"note": SCRIPT}}},
                 "dp": {"epsilon_spent": SCRIPT}, "accepted_risk": {"reason": SCRIPT},
                 "privacy_ledger": {"cumulative_epsilon": IMG}}]
    pool = {"images": SCRIPT, "counts": {SCRIPT: IMG}, "accepted": accepted,
            "duplicates_dropped": IMG, "balanced_dropped": SCRIPT}
    return build_report(run=SCRIPT, sites=sites, pool=pool, cnn=None, mode=IMG,
                        transport=SCRIPT)


def test_script_in_every_site_string_is_escaped(tmp_path: Path) -> None:
    from coordinator.report import write_report

    html_path, _ = write_report(hostile_report(), tmp_path)
    page = html_path.read_text()
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;" in page and "&lt;img src=x onerror=" in page


@pytest.mark.skipif(chromium_path() is None, reason="headless Chromium not installed "
                    "(`make chromium` installs Debian's package)")
def test_no_script_runs_when_the_hostile_report_opens_in_chromium(tmp_path: Path) -> None:
    from coordinator.report import write_report

    html_path, _ = write_report(hostile_report(), tmp_path)
    dom = subprocess.run([str(chromium_path()), "--headless", "--no-sandbox",
                          "--disable-gpu", "--virtual-time-budget=3000", "--dump-dom",
                          html_path.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    assert "<body" in dom and "&lt;script&gt;" in dom  # the page rendered the text …
    assert 'data-pw="xyz"' not in dom  # … and none of it ran
    assert "<script" not in dom and "<img" not in dom
