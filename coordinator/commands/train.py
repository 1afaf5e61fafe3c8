"""`synthlearn coordinator train`: the downstream CNN on the pooled synthetic set, and one
evaluation request folder per site (the air-gapped path's second step).

Same steps and same defaults as a Flower run (:mod:`coordinator.pipeline`; the CNN defaults
are :class:`coordinator.phases.RunSettings`' ``cnn-*`` keys).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def command(
    ctx: typer.Context,
    work: Path = typer.Option(Path("coordinator-work"), "--work", help="Coordinator folder "
                              "(after `synthlearn coordinator pool`)."),
    run_name: str = typer.Option("files", "--run-name"),
    epochs: int | None = typer.Option(None, "--epochs", help="Maximum epochs (run default)."),
    width: int | None = typer.Option(None, "--width", help="CNN base width (run default)."),
    batch: int | None = typer.Option(None, "--batch", help="Batch size (run default)."),
    patience: int | None = typer.Option(None, "--patience",
                                        help="Early-stopping patience (run default)."),
    max_minutes: float | None = typer.Option(None, "--max-minutes",
                                             help="Training time budget (run default)."),
    members: int | None = typer.Option(None, "--members", min=1, max=8,
                                       help="CNN seeds sharing the time budget; every epoch "
                                       "of each is a candidate the sites choose among on "
                                       "their real train split (run default)."),
    config: Path | None = typer.Option(None, "--config",
                                       help="TOML file; its [classifier] table sets the recipe."),
    own: bool = typer.Option(True, "--own/--no-own", help="Also train one CNN per site on its "
                             "own synthetic images (the report's 'own synthetic' column)."),
    n_boot: int = typer.Option(1000, "--n-boot", min=100, max=100_000,
                               help="Bootstrap resamples for each site's AUC CI."),
) -> None:
    """Train on synthetic images only; write one evaluation request folder per site.

    On a machine with several GPUs, run it under ``torchrun --nproc_per_node N`` (one
    process per GPU; each trains its share of every batch)."""
    from coordinator.errors import CoordinatorError
    from coordinator.phases import RunSettings
    from coordinator.pipeline import train_step, training_pools
    from coordinator.state import CoordinatorState
    from shared.cnn_train import ClassifierConfig
    from shared.config import resolve, to_dict
    from shared.data_parallel import ProcessGroup

    cfg = resolve(ClassifierConfig, ctx, toml=config, table="classifier",
                  defaults=to_dict(RunSettings().cnn_config()))
    state = CoordinatorState(work / "state.db")
    pool, round1 = training_pools(state, run_name)
    if pool is None:
        raise CoordinatorError(f"{work / 'state.db'}: run {run_name!r} has no pool yet; run "
                               "`synthlearn coordinator pool` first")
    group = ProcessGroup()
    try:
        if not group.main:
            # Under torchrun (several GPUs): this process trains its share of every batch;
            # rank 0 writes the weights, the state and the requests.
            state.close()
            train_step(pool, work, cfg, own=own, members=members or RunSettings().cnn_members,
                       round1=round1)
            return
        _train_and_request(state, pool, round1, work, cfg, run_name, own, members, n_boot)
    finally:
        group.stop()


def _train_and_request(state: Any, pool: dict[str, Any], round1: dict[str, Any] | None,
                       work: Path, cfg: Any, run_name: str, own: bool, members: int | None,
                       n_boot: int) -> None:
    """Rank 0 (or the only process): the CNNs, then the state and one request per site."""
    from coordinator.phases import RunSettings
    from coordinator.pipeline import request_evaluations, train_step, weights_for
    from shared.names import safe_name
    from shared.progress import say
    from shared.protocol import write_request_folder

    state.start_phase(run_name, "train")
    trained = train_step(pool, work, cfg, own=own, progress=True, log=say,
                         members=members or RunSettings().cnn_members, round1=round1)
    state.finish_phase(run_name, "train", trained)
    state.start_phase(run_name, "evaluate")
    sites = [acc["site"] for acc in pool.get("accepted", [])]
    requests = request_evaluations(run_name, trained, sites, n_boot)
    for site, request in requests.items():
        files = weights_for(trained, site)
        path = write_request_folder(work / "requests" / safe_name(site), request,
                                    files["pooled"], files.get("own"))
        typer.echo(f"{site}: {path}  (site runs: synthlearn node evaluate --request "
                   f"request.json --site-dir SITE)")
    state.finish_phase(run_name, "evaluate", {"requests": requests})
