"""`synthlearn node reader-study`: a blind real-vs-synthetic reader study and a teaching
gallery, served on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from shared.options import non_negative, port, positive


def command(
    site_dir: Path = typer.Option(..., "--site-dir", help="The site directory."),
    reader: list[str] = typer.Option(
        [], "--reader", help="Name a reader (repeat for several); names persist in the study."),
    study: str = typer.Option("default", "--study", help="Study name (several may coexist)."),
    synthetic: str | None = typer.Option(
        None, "--synthetic", help="Synthetic set for a new study (SITE/synthetic/NAME; "
        "default: 'default'). A study keeps the set it began with."),
    images: int = typer.Option(100, "--images", callback=positive,
                               help="Images in a new study: half real test, half synthetic."),
    seed: int = typer.Option(0, "--seed", callback=non_negative,
                             help="Seed for a new study's choice and orders."),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to bind; anything but loopback needs --token."),
    listen_port: int = typer.Option(8765, "--port", callback=port),
    token: str | None = typer.Option(None, "--token", envvar="SYNTHLEARN_READER_TOKEN",
                                     help="Access token (≥ 16 characters) for --host."),
    run_name: str = typer.Option("default", "--run-name",
                                 help="Trained run whose generator draws new gallery images."),
    results: bool = typer.Option(
        False, "--results", help="Print the results, write the numbers-only summary "
        "SITE/metrics/reader_study.json (which `node export` signs into the bundle), exit."),
) -> None:
    """Serve the reader study and teaching gallery at http://127.0.0.1:PORT (Ctrl-C stops;
    every answer is already saved, so run it again to resume)."""
    from node.reader_study.gallery import Gallery
    from node.reader_study.server import check_bind, create_app, serve
    from node.reader_study.session import ReaderStudy

    if not results:
        check_bind(host, token)  # before any work: a refused bind must not create a study
    s = ReaderStudy.open(site_dir, study, synthetic_name=synthetic, readers=reader,
                         n_images=images, seed=seed, create=not results)
    if results:
        path = s.write_summary()
        typer.echo(json.dumps(s.results(reveal_unfinished=True), indent=2))
        typer.echo(f"verdict: {s.results()['verdict']}")
        typer.echo(f"numbers-only summary: {path} (signed into the bundle by `node export`)")
        return
    if not s.readers():
        typer.echo("no readers named yet: add --reader NAME (repeat for several)", err=True)
    app = create_app(s, Gallery(site_dir, run_name), host=host, token=token)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{listen_port}/" + (f"?token={token}" if token else "")
    c = s.counts()
    typer.echo(f"reader study {study!r}: {c['real']} real test + {c['synthetic']} synthetic "
               f"images; readers: {', '.join(s.readers()) or 'none'}")
    typer.echo(f"open {url}  (Ctrl-C stops; answers are saved as they are given)")
    serve(app, host, listen_port)
