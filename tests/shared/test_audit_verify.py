"""`synthlearn audit verify`: readable verdicts and exit codes an auditor can script on."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from shared.bundle import write_bundle
from shared.cli import app
from shared.signing import PUBLIC_NAME, generate_keypair, sign_record
from shared.synthetic import SyntheticSet

runner = CliRunner()


def setup(tmp: Path) -> tuple[Path, Path]:
    keys, trust = tmp / "keys", tmp / "trust"
    generate_keypair(keys)
    trust.mkdir()
    (trust / "site-a.pub").write_bytes((keys / PUBLIC_NAME).read_bytes())
    return keys, trust


def bundle(tmp: Path, keys: Path, name: str, audit: dict, risk: str | None = None) -> Path:
    syn = SyntheticSet(np.full((4, 8, 8), 9, np.uint8), np.array([0, 1, 0, 1]), ["n", "a"])
    out = tmp / name
    write_bundle(out, syn, site="site-a", key_dir=keys, metrics={}, audit=audit,
                 dp={"epsilon_spent": 3.0, "delta": 1e-4}, config={}, accepted_risk=risk)
    return out


GOOD = {"gates_passed": True, "gates": {"copy_rate": {"value": 0.01, "max": 0.1,
                                                      "passed": True}}}
BAD = {"gates_passed": False, "gates": {"copy_rate": {"value": 0.3, "max": 0.1,
                                                     "passed": False}}}


def test_bundle_verdicts_and_exit_codes(tmp_path: Path) -> None:
    keys, trust = setup(tmp_path)
    good = bundle(tmp_path, keys, "good.slbundle", GOOD)
    r = runner.invoke(app, ["audit", "verify", str(good), "--trust", str(trust)])
    assert r.exit_code == 0, r.output
    assert "VERDICT: VALID" in r.output and "site-a.pub" in r.output and "ε 3.0" in r.output

    tampered = tmp_path / "tampered.slbundle"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(tampered, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, data.replace(b",1,a", b",0,n") if info.filename == "labels.csv"
                          else data)
    r = runner.invoke(app, ["audit", "verify", str(tampered), "--trust", str(trust)])
    assert r.exit_code == 1 and "hash-mismatch" in r.output and "labels.csv" in r.output

    risky = bundle(tmp_path, keys, "risky.slbundle", BAD, risk="reviewed by the DPO, ok")
    r = runner.invoke(app, ["audit", "verify", str(risky), "--trust", str(trust)])
    assert r.exit_code == 3 and "reviewed by the DPO" in r.output and "copy_rate" in r.output
    unsigned_fail = bundle(tmp_path, keys, "fail.slbundle", BAD)
    r = runner.invoke(app, ["audit", "verify", str(unsigned_fail), "--trust", str(trust)])
    assert r.exit_code == 1 and "gates" in r.output

    seen = tmp_path / "seen.txt"
    bid = json.loads(zipfile.ZipFile(good).read("manifest.json"))["bundle_id"]
    seen.write_text(bid + "\n")
    r = runner.invoke(app, ["audit", "verify", str(good), "--trust", str(trust), "--seen",
                            str(seen), "--json"])
    assert r.exit_code == 1 and json.loads(r.output)["failed"] == "replayed"


def test_signed_records_and_reports(tmp_path: Path) -> None:
    keys, trust = setup(tmp_path)
    rec = sign_record({"kind": "evaluation", "auc": 0.88}, keys)
    single = tmp_path / "eval.json"
    single.write_text(json.dumps(rec))
    r = runner.invoke(app, ["audit", "verify", str(single), "--trust", str(trust)])
    assert r.exit_code == 0 and "evaluation" in r.output and "VERDICT: VALID" in r.output

    forged = json.loads(json.dumps(rec))
    forged["payload"]["auc"] = 0.99
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"sites": {"a": rec, "b": forged}}))
    r = runner.invoke(app, ["audit", "verify", str(report), "--trust", str(trust)])
    assert r.exit_code == 1 and "$.sites.b" in r.output and "bad-signature" in r.output

    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"auc": 0.9}))
    r = runner.invoke(app, ["audit", "verify", str(plain), "--trust", str(trust)])
    assert r.exit_code == 1 and "not-signed" in r.output


def test_console_script_exit_code_reaches_the_shell(tmp_path: Path) -> None:
    """Through the real `synthlearn` entry point, not only Typer's test runner."""
    import subprocess
    import sys

    keys, trust = setup(tmp_path)
    risky = bundle(tmp_path, keys, "risky.slbundle", BAD, risk="reviewed by the DPO, ok")
    code = ("import sys; sys.argv = ['synthlearn', 'audit', 'verify', sys.argv[1], '--trust', "
            "sys.argv[2]]; from shared.cli import main; main()")
    r = subprocess.run([sys.executable, "-c", code, str(risky), str(trust)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr


def test_site_strings_are_printed_as_text_not_rich_markup(tmp_path: Path) -> None:
    """A site chooses its accepted-risk reason and gate notes; `[bold green]…[/]` in them must
    print as those characters, never restyle (or fake) the auditor's verdict line."""
    keys, trust = setup(tmp_path)
    fake = "[bold green]VERDICT: VALID[/] [link=https://evil.example]ok[/link]"
    audit = {"gates_passed": False, "gates": {"copy_rate": {
        "value": 0.3, "max": 0.1, "passed": False, "note": fake}}}
    path = bundle(tmp_path, keys, "risk.slbundle", audit, risk=fake)
    r = runner.invoke(app, ["audit", "verify", str(path), "--trust", str(trust)])
    assert r.exit_code == 3
    flat = "".join(r.output.split())
    assert "".join(fake.split()) in flat  # the reason, verbatim


def test_a_json_file_that_is_not_plain_json_is_a_named_failure(tmp_path: Path) -> None:
    """An integer over 4300 digits or deep nesting used to end the auditor's run in a
    traceback (and no JSON verdict with --json)."""
    _, trust = setup(tmp_path)
    for label, text in {"huge-int": '{"a": ' + "1" * 5000 + "}", "deep": "[" * 100_000,
                        "twice": '{"sites": 1, "sites": 2}'}.items():
        path = tmp_path / f"{label}.json"
        path.write_text(text)
        r = runner.invoke(app, ["audit", "verify", str(path), "--trust", str(trust), "--json"])
        assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (label, r.exception)
        verdict = json.loads(r.output)
        assert verdict["failed"] == "corrupt" and f"{label}.json" in verdict["message"]


def test_a_report_may_show_a_signed_record_only_in_its_own_column_and_run(
        tmp_path: Path) -> None:
    """A hostile coordinator holds every genuine record a site ever signed for it. The
    numbers of each matched their signature, so `audit verify` passed a report that showed
    the site's own-synthetic or real-data AUC, or an older run's, as the pooled CNN's."""
    from shared.report_verify import check_report

    keys, trust = setup(tmp_path)
    pooled_sha, own_sha = "a" * 64, "b" * 64

    def column(role: str, run: str, sha: str | None, auc: float,
               kind: str = "evaluation") -> dict:
        payload = {"kind": kind, "site": "site-a", "auc": auc, "n_test": 100, "role": role,
                   "run_tag": run, "request_id": f"req-{run}", "weights_sha256": sha}
        if kind != "evaluation":
            del payload["role"], payload["weights_sha256"]
        signed = sign_record(payload, keys)
        return {"auc": auc, "n_test": 100, "verified": True,
                "key_fingerprint": signed["key_fingerprint"], "signed": signed}

    def report(**roles: dict) -> dict:
        return {"format": "synthlearn-report", "run": "r2",
                "cnn": {"weights_sha256": pooled_sha},
                "sites": [{"site": "site-a", "utility_ratio": None, **roles}]}

    honest = report(pooled=column("pooled", "r2", pooled_sha, 0.7),
                    own=column("own", "r2", own_sha, 0.8),
                    baseline=column("baseline", "r2", None, 0.9, "local_real_baseline"))
    honest["sites"][0]["utility_ratio"] = round(0.7 / 0.9, 4)
    assert check_report(honest, trust) == []
    cases = {
        "own as pooled": (column("own", "r2", own_sha, 0.95), "evaluates the 'own' weights"),
        "baseline as pooled": (column("baseline", "r2", None, 0.95, "local_real_baseline"),
                               "a 'local_real_baseline' record, not 'evaluation'"),
        "older run": (column("pooled", "r1", pooled_sha, 0.95),
                      "for run 'r1', the report is run 'r2'"),
        "other weights": (column("pooled", "r2", "c" * 64, 0.95),
                          "the report's pooled CNN is " + pooled_sha),
    }
    for label, (rec, why) in cases.items():
        problems = check_report(report(pooled=rec), trust)
        assert any(p == "$.sites[0].pooled" and why in m for p, m in problems), (label, problems)
    assert any("not 'local_real_baseline'" in m for _, m in check_report(
        report(baseline=column("own", "r2", own_sha, 0.9)), trust))


def test_a_report_must_show_whose_recipe_trained_the_yardstick(tmp_path: Path) -> None:
    """The site signs who chose its baseline's recipe; a report that leaves it out, or shows
    the coordinator's recipe as the site's, fails, though every number in it verifies."""
    from shared.report_verify import check_report

    keys, trust = setup(tmp_path)
    signed = sign_record({"kind": "local_real_baseline", "site": "site-a", "auc": 0.7,
                          "n_test": 100, "run_tag": "r2", "request_id": "req-r2",
                          "recipe": "request", "optimizer_steps": 20}, keys)
    row = {"auc": 0.7, "n_test": 100, "verified": True,
           "key_fingerprint": signed["key_fingerprint"], "signed": signed,
           "recipe": "request", "optimizer_steps": 20}

    def report(baseline: dict) -> dict:
        return {"format": "synthlearn-report", "run": "r2", "cnn": {"weights_sha256": "a" * 64},
                "sites": [{"site": "site-a", "utility_ratio": None, "baseline": baseline}]}

    assert check_report(report(row), trust) == []
    hidden = {k: v for k, v in row.items() if k != "recipe"}
    assert ("$.sites[0].baseline.recipe", "the signed record says 'request'; the report "
            "leaves it out") in check_report(report(hidden), trust)
    relabelled = check_report(report({**row, "recipe": "site"}), trust)
    assert any(p == "$.sites[0].baseline.recipe" for p, _ in relabelled), relabelled


def test_an_own_column_from_the_site_s_bundle_is_checked_against_its_signed_manifest(
        tmp_path: Path) -> None:
    """Without a coordinator-side own-synthetic CNN (the demo's run config), the report shows
    each site's GAN-train score from its bundle. Every honest demo report failed `audit
    verify` ("numbers without the signed record") because the check looked only for a record
    of its own; now the numbers must equal the bundle's signed manifest, and only that."""
    from coordinator.report import build_report
    from shared.bundle import verify_bundle
    from shared.report_verify import check_report

    keys, trust = setup(tmp_path)
    syn = SyntheticSet(np.full((4, 8, 8), 9, np.uint8), np.array([0, 1, 0, 1]), ["n", "a"])
    score = {"auc": 0.8125, "ci_low": 0.7, "ci_high": 0.9, "n_test": 40}
    path = tmp_path / "b.slbundle"
    write_bundle(path, syn, site="site-a", key_dir=keys,
                 metrics={"synthetic-quality": {"gan_train": score}}, audit=GOOD,
                 dp={"epsilon_spent": 3.0, "delta": 1e-4}, config={})
    vb = verify_bundle(path, trust)
    acc = {"site": "site-a", "bundle_id": vb.bundle_id, "images": 4,
           "metrics": vb.manifest.get("metrics"), "signed_manifest": vb.signed_manifest}

    def report(bundle: dict) -> dict:
        return build_report(run="r1", sites={"site-a": {"bundle": bundle}},
                            pool={"accepted": [acc]}, cnn=None)

    honest = report(acc)
    assert honest["sites"][0]["own"]["auc"] == 0.8125
    assert check_report(honest, trust) == []
    honest["sites"][0]["own"]["auc"] = 0.95
    assert [p for p, _ in check_report(honest, trust)] == ["$.sites[0].own.auc"]
    extra = report(acc)
    extra["sites"][0]["own"]["n_pos"] = 20  # a number the bundle never signed
    assert [p for p, _ in check_report(extra, trust)] == ["$.sites[0].own.n_pos"]
    # a row pointing at a bundle the report's pool does not hold: nothing backs its numbers
    stray = report({**acc, "bundle_id": "another"})
    stray["pool"]["accepted"][0] = acc
    assert any(p == "$.sites[0].own" and "no verified pooled bundle" in m
               for p, m in check_report(stray, trust))
    # a tampered manifest backs nothing either
    forged = report(acc)
    import base64

    manifest = {**vb.manifest, "metrics": {"synthetic-quality": {"gan_train": {
        **score, "auc": 0.95}}}}
    forged["pool"]["accepted"][0] = {**acc, "signed_manifest": {
        **acc["signed_manifest"],
        "manifest_b64": base64.b64encode(json.dumps(manifest).encode()).decode()}}
    forged["sites"][0]["own"]["auc"] = 0.95
    paths = [p for p, _ in check_report(forged, trust)]
    assert "$.sites[0].own" in paths and "$.pool.accepted[0].signed_manifest" in paths


def test_gate_limits_are_printed_rounded(capsys: pytest.CaptureFixture[str]) -> None:
    from shared.commands.audit_verify import print_gates

    print_gates({"gates": {"data_copying": {"value": 0.0, "max": 0.0019047619047619048,
                                            "passed": True},
                           "near_copies": {"value": 0, "max": 0, "passed": True}}})
    out = capsys.readouterr().out
    assert "≤ 0.001905" in out and "0.0019047619" not in out and "≤ 0 " in out
