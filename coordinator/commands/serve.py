"""`synthlearn coordinator serve`: the SuperLink on loopback behind the Fleet-only TLS proxy.

flwr 1.41 serves the Fleet API, the Control API and the runtime APIs on one port, and
open-source Flower does not authenticate Control calls. So the SuperLink listens on
127.0.0.1 only and the one public listener is :mod:`coordinator.fleet_proxy` (nginx), which
forwards the Fleet API's exact paths and answers 403 to everything else. There is no way to
put the SuperLink itself on a non-loopback address from this command.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from shared.options import port


def command(
    work: Path = typer.Option(Path("coordinator-work"), "--work",
                              help="Folder for the SuperLink's home, database and logs."),
    host: str = typer.Option("0.0.0.0", "--host", help="Address of the public Fleet port "
                             "(the nginx proxy). The SuperLink itself is always on 127.0.0.1."),
    port: int = typer.Option(9092, "--port", help="Public Fleet API port (SuperNodes connect "
                             "here).", callback=port),
    control_port: int = typer.Option(9093, "--control-port", help="The SuperLink's own port on "
                                     "127.0.0.1 (Control API for `coordinator run` and "
                                     "registration; runtime APIs).", callback=port),
    tls_dir: Path = typer.Option(None, "--tls-dir", help="Folder with ca.crt, server.pem and "
                                 "server.key (made by deploy/make_certs.py). Required unless "
                                 "--insecure."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS and no proxy: the SuperLink "
                                  "alone on 127.0.0.1:PORT, for loopback tests only."),
    auth: bool = typer.Option(True, "--auth/--no-auth", help="SuperNode authentication: only "
                              "SuperNodes registered with `flwr supernode register` may join."),
) -> None:
    """Start the SuperLink (loopback, TLS, SuperNode auth) and the Fleet-only proxy; run until
    Ctrl-C or SIGTERM, then stop every process it started.

    Telemetry and update checks are off, run-time dependency installation is disabled, the
    database is a per-start file in WORK (removed on each start), and FLWR_HOME is WORK's own.
    """
    from coordinator.errors import CoordinatorError
    from shared.flower_proc import (
        LOOPBACK_HOSTS,
        FlowerProcess,
        Interrupted,
        TlsFiles,
        start_superlink,
        stop_all,
        stop_flower_on_signals,
        write_connection,
    )

    work = work.absolute()
    tls: TlsFiles | None = None
    if insecure:
        if host == "0.0.0.0":
            host = "127.0.0.1"
        if host not in LOOPBACK_HOSTS:
            raise CoordinatorError(f"--insecure is for loopback tests only, not --host {host}")
        control_port = port
    else:
        if tls_dir is None:
            raise CoordinatorError("give --tls-dir (ca.crt, server.pem, server.key; see "
                                   "deploy/make_certs.py), or --insecure for a loopback test")
        tls = TlsFiles(tls_dir / "ca.crt", tls_dir / "server.pem", tls_dir / "server.key")
        for f in (tls.ca_cert, tls.server_cert, tls.server_key):
            if not f.exists():
                raise CoordinatorError(f"{f}: missing; run deploy/make_certs.py first")
        if control_port == port:
            raise CoordinatorError("--control-port must differ from --port (the public Fleet "
                                   "port is the proxy's)")
    started: list[FlowerProcess] = []
    with stop_flower_on_signals():
        try:
            link = start_superlink(work, control_port, host="127.0.0.1", tls=tls,
                                   auth=auth and tls is not None)
            started.append(link)
            if tls is not None:
                from coordinator.fleet_proxy import start_fleet_proxy

                started.append(start_fleet_proxy(work, host, port, control_port, tls))
            cli_home = work / "cli-home"
            write_connection(cli_home, "synthlearn", f"127.0.0.1:{control_port}",
                             root_cert=tls.ca_cert if tls else None)
            if tls is None:
                typer.echo(f"SuperLink on 127.0.0.1:{port} (INSECURE, loopback test); log "
                           f"{link.log_path}")
            else:
                typer.echo(f"Fleet API (public, via nginx, TLS): {host}:{port}; everything else "
                           "answers 403 there")
                typer.echo(f"Control API (loopback only): 127.0.0.1:{control_port}"
                           f"{'; SuperNode auth on' if auth else ''}; logs {work / 'logs'}")
                typer.echo(f"Register a site: FLWR_HOME={cli_home} flwr supernode register "
                           "SITE.pub synthlearn")
            typer.echo("Stop with Ctrl-C (or SIGTERM).")
            while all(proc.alive() for proc in started):
                time.sleep(0.5)
            dead = next(proc for proc in started if not proc.alive())
            raise CoordinatorError(f"{dead.name} exited ({dead.poll()}); see {dead.log_path}:\n"
                                   f"{dead.tail()}")
        except Interrupted as exc:
            typer.echo(f"{exc}: stopping the SuperLink and the proxy", err=True)
            raise typer.Exit(128 + exc.signum) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: stopping the SuperLink and the proxy", err=True)
            raise typer.Exit(130) from None
        finally:
            stop_all(list(reversed(started)))
