"""`synthlearn coordinator pool DIR --trust KEYS`: the air-gapped path's first step.

The step itself is :func:`coordinator.pipeline.pool_step`, the one a Flower run calls.
"""

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

    from coordinator.errors import PoolError
    from coordinator.phases import RunSettings
    from coordinator.pipeline import pool_step
    from coordinator.state import CoordinatorState
    from shared.bundle import iter_bundle_files
    from shared.progress import say, stderr_console

    # Checked before the state is touched: a mistyped folder must not undo the last pool.
    if not bundles.is_dir():
        raise PoolError(f"{bundles}: bundle folder not found")
    paths = list(iter_bundle_files(bundles))
    if not paths:
        raise PoolError(f"{bundles}: no *.slbundle or *.zip file in this folder")
    state = CoordinatorState(work / "state.db")
    state.start_phase(run_name, "pool")
    summary = pool_step(state, run_name, paths, trust, work,
                        balance=balance, seed=RunSettings().seed)
    table = Table(title=f"Bundles in {bundles}")
    for col in ("site", "verdict", "images / reason"):
        table.add_column(col)
    for a in summary["accepted"]:
        table.add_row(a["site"], "[green]pooled[/]", str(a["images"]))
    for r in summary["rejected"]:
        table.add_row(str(r.get("site") or Path(r["path"]).name), "[red]rejected[/]",
                      f"{r['reason']}: {r['message']}")
    stderr_console.print(table)
    state.finish_phase(run_name, "pool", summary)
    # What was built on an earlier pool of this name (a round 2, a CNN, its evaluations) no
    # longer matches the pool on disk: `train` and `report` must not read it.
    state.invalidate_from(run_name, "round2")
    say(f"pooled {summary['images']} synthetic images from {len(summary['accepted'])} "
        f"site(s) → {work / 'pool' / 'pooled'}; next: synthlearn coordinator train --work {work}")
