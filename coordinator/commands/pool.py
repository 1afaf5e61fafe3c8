"""`synthlearn coordinator pool DIR --trust KEYS`: the air-gapped path's first step."""

from __future__ import annotations

from pathlib import Path

import typer


def command(
    bundles: Path = typer.Argument(..., help="Folder of *.slbundle files carried from sites."),
    trust: Path = typer.Option(..., "--trust", help="Folder of trusted site public keys."),
    work: Path = typer.Option(Path("coordinator-work"), "--work", help="Coordinator folder."),
    run_name: str = typer.Option("files", "--run-name", help="Name of this pooling run."),
    balance: bool = typer.Option(True, "--balance/--no-balance",
                                 help="Undersample classes to the smallest one."),
) -> None:
    """Verify every bundle, reject bad ones with the reason, pool the good ones."""
    from rich.table import Table

    from coordinator.pool import pool_bundles, require_pool
    from coordinator.state import CoordinatorState
    from shared.bundle import iter_bundle_files
    from shared.progress import stderr_console

    state = CoordinatorState(work / "state.db")
    state.start_phase(run_name, "pool")
    res = pool_bundles(list(iter_bundle_files(bundles)), trust, state, run_name,
                       balance=balance, out_dir=work / "pool")
    table = Table(title=f"Bundles in {bundles}")
    for col in ("site", "verdict", "images / reason"):
        table.add_column(col)
    for a in res.accepted:
        table.add_row(a["site"], "[green]pooled[/]", str(a["images"]))
    for r in res.rejected:
        table.add_row(str(r.get("site") or Path(r["path"]).name), "[red]rejected[/]",
                      f"{r['reason']}: {r['message']}")
    stderr_console.print(table)
    for r in res.rejected:
        if r.get("site"):
            state.set_site_status(run_name, str(r["site"]), "excluded",
                                  f"bundle rejected [{r['reason']}]: {r['message']}")
    for a in res.accepted:
        state.set_site_status(run_name, a["site"], "ok")
    pooled = require_pool(res, bundles)
    (work / "pool" / "trust-dir.txt").write_text(str(trust.absolute()) + "\n")
    state.finish_phase(run_name, "pool", res.summary())
    typer.echo(f"pooled {len(pooled)} synthetic images from {len(res.accepted)} site(s) → "
               f"{work / 'pool' / 'pooled'}; next: synthlearn coordinator train --work {work}")
