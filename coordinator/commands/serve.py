"""`synthlearn coordinator serve`: start Flower's SuperLink with safe flags, in the foreground."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from shared.options import port


def command(
    work: Path = typer.Option(Path("coordinator-work"), "--work",
                              help="Folder for the SuperLink's home, database and log."),
    host: str = typer.Option("0.0.0.0", "--host", help="Address to listen on."),
    port: int = typer.Option(9092, "--port", help="Port of the SuperLink (Fleet, Control and "
                             "ServerApp APIs share it in flwr 1.41).", callback=port),
    tls_dir: Path = typer.Option(None, "--tls-dir", help="Folder with ca.crt, server.pem and "
                                 "server.key (made by deploy/make_certs.py). Required unless "
                                 "--insecure."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS: loopback tests only; "
                                  "refused on any other address."),
    auth: bool = typer.Option(True, "--auth/--no-auth", help="SuperNode authentication: only "
                              "SuperNodes registered with `flwr supernode register` may join."),
) -> None:
    """Start the SuperLink (TLS + SuperNode auth by default) and keep it running until Ctrl-C.

    Telemetry and update checks are off, run-time dependency installation is disabled, the
    database is a per-start file in WORK (removed on each start), and FLWR_HOME is WORK's own.
    """
    from coordinator.errors import CoordinatorError
    from shared.flower_proc import TlsFiles, start_superlink, write_connection

    if insecure:
        if host == "0.0.0.0":
            host = "127.0.0.1"
        tls = None
    else:
        if tls_dir is None:
            raise CoordinatorError("give --tls-dir (ca.crt, server.pem, server.key; see "
                                   "deploy/make_certs.py), or --insecure for a loopback test")
        tls = TlsFiles(tls_dir / "ca.crt", tls_dir / "server.pem", tls_dir / "server.key")
        for f in (tls.ca_cert, tls.server_cert, tls.server_key):
            if not f.exists():
                raise CoordinatorError(f"{f}: missing; run deploy/make_certs.py first")
    link = start_superlink(work.absolute(), port, host=host, tls=tls, auth=auth and not insecure)
    shown = "127.0.0.1" if host == "0.0.0.0" else host
    cli_home = work.absolute() / "cli-home"
    write_connection(cli_home, "synthlearn", f"{shown}:{port}",
                     root_cert=tls.ca_cert if tls else None)
    typer.echo(f"SuperLink listening on {host}:{port} ({'TLS' if tls else 'INSECURE, loopback'}"
               f"{', SuperNode auth' if auth and tls else ''}); log {link.log_path}")
    typer.echo(f"Register a site: FLWR_HOME={cli_home} flwr supernode register SITE.pub "
               "synthlearn")
    typer.echo("Stop with Ctrl-C.")
    try:
        while link.alive():
            time.sleep(1.0)
        raise CoordinatorError(f"the SuperLink exited ({link.poll()}); see {link.log_path}:\n"
                               f"{link.tail()}")
    finally:
        link.stop()
