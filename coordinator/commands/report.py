"""`synthlearn coordinator report --replies DIR`: the air-gapped path's last step.

Each reply is matched to the request this run sent (its request id) and verified exactly as
over Flower (:func:`coordinator.pipeline.accept_reply`); the report is the same function.
"""

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
    from coordinator.pipeline import accept_reply, report_step
    from coordinator.state import CoordinatorState
    from shared.progress import say
    from shared.protocol import read_reply_files

    state = CoordinatorState(work / "state.db")
    trained = state.phase_result(run_name, "train")
    sent = (state.phase_result(run_name, "evaluate") or {}).get("requests")
    if trained is None or sent is None:
        raise CoordinatorError(f"{work / 'state.db'}: run {run_name!r} has sent no evaluation "
                               "requests; run `synthlearn coordinator train` first")
    docs = read_reply_files(replies)
    if not docs:
        raise CoordinatorError(f"{replies}: no reply-*.json files")
    site_of = {str(req["request-id"]): site for site, req in sent.items()}
    for doc in docs:
        site = site_of.get(str(doc.get("request_id", "")))
        if site is None:
            say(f"{doc['_path']}: answers no request this run sent; ignored")
            continue
        accept_reply(state, run_name, site, doc, sent[site], trained, trust,
                     log=say)
    paths = report_step(state, run_name, work, mode="collect", transport="files")
    state.finish_phase(run_name, "report", paths)
    typer.echo(json.dumps(paths))
