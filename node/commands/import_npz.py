"""`synthlearn node import-npz FILE --site-dir SITE`: MedMNIST-layout arrays into a store."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from shared.options import non_negative


def command(
    file: Path = typer.Argument(..., help="An .npz with <split>_images / <split>_labels."),
    site_dir: Path = typer.Option(..., "--site-dir", help="Site directory (created if new)."),
    size: int = typer.Option(0, "--size", help="Resize to this side (0 = keep native).",
                             callback=non_negative),
    class_names: str = typer.Option(
        "", "--class-names",
        help="Comma-separated names for labels 0,1,… (default: 'No finding', class-1, …)."),
    val_split: str = typer.Option("test", "--val-split",
                                  help="Where the 'val' arrays go: test or train."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Import a research data set in the MedMNIST key layout (e.g. PneumoniaMNIST).

    train → train split, test → test split, val → --val-split. Re-importing adds only
    what the store does not hold yet.
    """
    from node.commands.inspect import render_summary
    from node.errors import IngestError
    from node.importers import import_npz

    names = [n.strip() for n in class_names.split(",") if n.strip()] or None
    report = import_npz(file, site_dir, size=size or None, class_names=names,
                        val_split=val_split, progress=not quiet)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        render_summary(report["store"], title=f"Site store {site_dir}")
        typer.echo(f"Imported {report['accepted']} image(s) from {file} "
                   f"({report['already_in_store']} already in the store).")
    if report["store"]["images"] == 0:
        raise IngestError(f"{file}: no image was imported")
