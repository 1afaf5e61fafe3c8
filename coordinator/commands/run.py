"""`synthlearn coordinator run`: submit the federation run and wait for its real outcome."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from shared.options import positive


def command(
    superlink: str = typer.Option("127.0.0.1:9093", "--superlink", help="HOST:PORT of the "
                                  "SuperLink's loopback Control API (`coordinator serve "
                                  "--control-port`; run this on the SuperLink's machine: the "
                                  "ServerApp writes into --work there)."),
    app_key: Path = typer.Option(None, "--app-key", help="The operator's app-signing key "
                                 "(Ed25519, OpenSSH; certs/app-signing from "
                                 "deploy/make_certs.py). Sites run only apps it signed. "
                                 "Required unless --insecure."),
    superlink_db: Path = typer.Option(None, "--superlink-db", help="The SuperLink's database "
                                      "(default: WORK/superlink.db, where `coordinator serve "
                                      "--work WORK` keeps it); the signature is stored there."),
    work: Path = typer.Option(Path("coordinator-work"), "--work", help="Coordinator folder: "
                              "state.db, bundles, pool, CNN weights, report."),
    trust: Path = typer.Option(..., "--trust", help="Folder of trusted site public keys."),
    mode: str = typer.Option("collect", "--mode", help="'collect' (sites export their latest "
                             "audited bundle) or 'train' (sites train within the budget)."),
    sites: int = typer.Option(3, "--sites", help="How many SuperNodes to wait for.",
                              callback=positive),
    run_name: str = typer.Option("run", "--run-name", help="Same name = resume that run."),
    root_cert: Path = typer.Option(None, "--root-cert", help="CA certificate of the "
                                   "SuperLink's TLS (omit only with --insecure on loopback)."),
    insecure: bool = typer.Option(False, "--insecure", help="Loopback tests only."),
    config: list[str] = typer.Option([], "--config", "-c", help="Extra run config key=value "
                                     "(TOML value), e.g. -c n-synthetic=500."),
    timeout_minutes: float = typer.Option(240.0, "--timeout-minutes", callback=positive),
) -> None:
    """Start the Flower run, follow it phase by phase, and fail unless it completed.

    `flwr run` itself exits 0 even when the run later fails; this command reads the final
    status with `flwr ls` and exits non-zero with the ServerApp's log tail when it failed.
    """
    from coordinator.errors import CoordinatorError
    from coordinator.launch import ConsoleEcho, submit_and_watch
    from coordinator.phases import run_config_defaults, settings_from_run_config
    from shared.config import parse_assignment
    from shared.errors import ConfigError
    from shared.flower_proc import write_connection

    if mode not in ("collect", "train"):
        raise CoordinatorError(f"--mode must be 'collect' or 'train', not {mode!r}")
    if root_cert is None and not insecure:
        raise CoordinatorError("give --root-cert (the federation's ca.crt), or --insecure for "
                               "a loopback test")
    work = work.absolute()
    if app_key is None and not insecure:
        raise CoordinatorError("give --app-key (the operator's app-signing key, made by "
                               "deploy/make_certs.py): sites refuse unsigned apps")
    signing = None
    if app_key is not None:
        if not app_key.exists():
            raise CoordinatorError(f"{app_key}: no such app-signing key")
        signing = ((superlink_db or work / "superlink.db").absolute(), app_key.absolute())
    run_config: dict[str, object] = {"work-dir": str(work), "trust-dir": str(trust.absolute()),
                                     "mode": mode, "expected-sites": sites,
                                     "run-name": run_name}
    known = run_config_defaults()
    for item in config:
        try:
            key, value = parse_assignment(item)
        except ConfigError as e:
            raise CoordinatorError(f"--config {e}") from None
        if key not in known:  # Flower matches keys as spelled: n_synthetic is not n-synthetic
            raise CoordinatorError(f"--config {item!r}: unknown key {key!r} (known: "
                                   f"{', '.join(sorted(known))})")
        run_config[key] = value
    # Checked here (unknown keys, bad values: one line, exit 2), not an hour into the run.
    settings_from_run_config(run_config).cnn_config()
    cli_home = work / "cli-home"
    write_connection(cli_home, "synthlearn", superlink,
                     root_cert=root_cert.absolute() if root_cert else None, insecure=insecure)
    with ConsoleEcho() as echo:
        row = submit_and_watch("synthlearn", cli_home, run_config,
                               timeout=timeout_minutes * 60, echo=echo, signing=signing)
    typer.echo(json.dumps({k: row.get(k) for k in ("run_id", "status", "elapsed")}))
    typer.echo(f"report: {work / 'report' / 'report.html'}")
