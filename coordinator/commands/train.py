"""`synthlearn coordinator train`: the downstream CNN on the pooled synthetic set."""

from __future__ import annotations

from pathlib import Path

import typer


def command(
    work: Path = typer.Option(Path("coordinator-work"), "--work", help="Coordinator folder "
                              "(after `synthlearn coordinator pool`)."),
    run_name: str = typer.Option("files", "--run-name"),
    epochs: int = typer.Option(30, "--epochs"),
    width: int = typer.Option(64, "--width"),
    max_minutes: float = typer.Option(None, "--max-minutes"),
    own: bool = typer.Option(True, "--own/--no-own", help="Also train one CNN per site on its "
                             "own synthetic images (the report's 'own synthetic' column)."),
    n_boot: int = typer.Option(1000, "--n-boot"),
) -> None:
    """Train on synthetic images only; write one evaluation request folder per site."""
    from coordinator.errors import CoordinatorError
    from coordinator.phases import _own_set, _safe_name
    from coordinator.state import CoordinatorState
    from coordinator.train import train_pooled
    from shared.cnn_train import ClassifierConfig
    from shared.config import write_resolved
    from shared.protocol import make_request, write_request_folder
    from shared.synthetic import SyntheticSet

    state = CoordinatorState(work / "state.db")
    pool = state.phase_result(run_name, "pool")
    if pool is None:
        raise CoordinatorError(f"{work / 'state.db'}: run {run_name!r} has no pool yet; run "
                               "`synthlearn coordinator pool` first")
    cfg = ClassifierConfig(epochs=epochs, width=width, max_minutes=max_minutes)
    state.start_phase(run_name, "train")
    pooled = SyntheticSet.load(work / "pool" / "pooled")
    cnn = work / "cnn"
    result = {"pooled": train_pooled(pooled, cnn / "pooled-cnn.npz", cfg), "own": {}}
    write_resolved(cfg, cnn, "cnn-config.json")
    for acc in pool.get("accepted", []):
        if not own:
            break
        own_set = _own_set(Path(acc["path"]), _trust_of(work, run_name))
        if own_set is not None:
            result["own"][acc["site"]] = train_pooled(
                own_set, cnn / f"own-{_safe_name(acc['site'])}.npz", cfg, role="own")
    state.finish_phase(run_name, "train", result)
    for acc in pool.get("accepted", []):
        site = acc["site"]
        own_rec = result["own"].get(site)
        req = make_request(run_name, result["pooled"]["weights_sha256"],
                           own_rec["weights_sha256"] if own_rec else None, n_boot)
        path = write_request_folder(work / "requests" / _safe_name(site), req,
                                    cnn / "pooled-cnn.npz",
                                    Path(own_rec["weights"]) if own_rec else None)
        typer.echo(f"{site}: {path}  (site runs: synthlearn node evaluate --request "
                   f"request.json --site-dir SITE)")


def _trust_of(work: Path, run_name: str) -> Path:
    """The trust folder used at pooling time (remembered next to the pool)."""
    from coordinator.errors import CoordinatorError

    marker = work / "pool" / "trust-dir.txt"
    if not marker.exists():
        raise CoordinatorError(f"{marker}: missing; re-run `synthlearn coordinator pool`")
    return Path(marker.read_text().strip())
