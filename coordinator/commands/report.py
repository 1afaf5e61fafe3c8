"""`synthlearn coordinator report --replies DIR`: the air-gapped path's last step."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def command(
    replies: Path = typer.Option(..., "--replies", help="Folder of reply-*.json files that "
                                 "sites wrote with `synthlearn node evaluate --request`."),
    work: Path = typer.Option(Path("coordinator-work"), "--work", help="Coordinator folder."),
    trust: Path = typer.Option(..., "--trust", help="Folder of trusted site public keys."),
    run_name: str = typer.Option("files", "--run-name"),
) -> None:
    """Verify every signed reply against the weights sent, then write report.html + .json."""
    from coordinator.errors import CoordinatorError
    from coordinator.report import build_report, write_report
    from coordinator.state import CoordinatorState
    from shared.protocol import read_reply_files, verify_reply

    state = CoordinatorState(work / "state.db")
    trained = state.phase_result(run_name, "train")
    if trained is None:
        raise CoordinatorError(f"{work / 'state.db'}: run {run_name!r} has no trained CNN; run "
                               "`synthlearn coordinator train` first")
    docs = read_reply_files(replies)
    if not docs:
        raise CoordinatorError(f"{replies}: no reply-*.json files")
    statuses = state.site_statuses(run_name)
    own = trained.get("own") or {}
    for doc in docs:
        site = str(doc.get("site", ""))
        expected = {"pooled": trained["pooled"]["weights_sha256"]}
        if site in own:
            expected["own"] = own[site]["weights_sha256"]
        v = verify_reply(doc, trust, expected)
        for role in ("pooled", "own", "baseline"):
            if role in v:
                state.add_evaluation(run_name, site, role, v[role])
        if v["problems"]:
            state.add_evaluation(run_name, site, "problems", {"problems": v["problems"]})
        typer.echo(f"{site}: {', '.join(r for r in ('pooled', 'own', 'baseline') if r in v)}"
                   f" verified{'; problems: ' + '; '.join(v['problems']) if v['problems'] else ''}")
    evals = state.evaluations(run_name)
    pool = state.phase_result(run_name, "pool") or {}
    accepted = {a["site"]: a for a in pool.get("accepted", [])}
    sites = {}
    for site in sorted(set(statuses) | set(evals)):
        st = statuses.get(site, {"status": "ok", "reason": ""})
        e = evals.get(site, {})
        status, reason = st["status"], st["reason"]
        if status == "ok" and "pooled" not in e:
            status, reason = "dropped", "no verified evaluation reply received"
        sites[site] = {"status": status, "reason": reason, "baseline": e.get("baseline"),
                       "own": e.get("own"), "pooled": e.get("pooled"),
                       "problems": (e.get("problems") or {}).get("problems", []),
                       "bundle": accepted.get(site)}
    report = build_report(run=run_name, sites=sites, pool=pool, cnn=trained["pooled"],
                          phases=state.phase_times(run_name), mode="collect", transport="files")
    html_path, json_path = write_report(report, work / "report")
    state.finish_phase(run_name, "report", {"html": str(html_path), "json": str(json_path)})
    typer.echo(json.dumps({"html": str(html_path), "json": str(json_path)}))
