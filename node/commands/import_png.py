"""`synthlearn node import-png FOLDER --labels CSV --site-dir SITE`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from shared.options import fraction, positive


def command(
    folder: Path = typer.Argument(..., help="Folder of PNG/JPEG/TIFF images (recursive)."),
    labels: Path = typer.Option(..., "--labels",
                                help="image_id,lesion_type or image_id,label sheet "
                                     "(optional patient_id, split columns); unknown lesion "
                                     "names: map them in SITE/label-map.csv."),
    site_dir: Path = typer.Option(..., "--site-dir", help="Site directory (created if new)."),
    size: int = typer.Option(256, "--size", help="Side of the stored square images, px.",
                             callback=positive),
    test_fraction: float = typer.Option(0.2, "--test-fraction",
                                        help="Share of patients in the test split.",
                                        callback=fraction),
    min_side: int = typer.Option(128, "--min-side", help="Skip images smaller than this.",
                                 callback=positive),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or skip lines."),
) -> None:
    """Import a folder of images plus a label sheet into the site store (research use)."""
    from node.commands.inspect import render_summary
    from node.errors import IngestError
    from node.importers import import_png

    report = import_png(folder, labels, site_dir, size=size, test_fraction=test_fraction,
                        min_side=min_side, progress=not quiet)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        render_summary(report["store"], title=f"Site store {site_dir}")
        typer.echo(f"This run: {report['processed']} new file(s), {report['accepted']} "
                   f"accepted, {report['skipped']} skipped.")
    if report["store"]["images"] == 0:
        raise IngestError(f"{folder}: no image was accepted; see the skip reasons above")
