"""`synthlearn node preprocess DICOM_DIR --labels CSV --site-dir SITE`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from shared.options import fraction, non_negative, positive


def command(
    dicom_dir: Path = typer.Argument(..., help="Folder of DICOM files (searched recursively)."),
    labels: Path = typer.Option(..., "--labels",
                                help="Label sheet: image_id,lesion_type (VinDr) or "
                                     "image_id,label. Lesion names outside the VinDr-SpineXR "
                                     "vocabulary are mapped in SITE/label-map.csv "
                                     "(label,class) or skipped."),
    site_dir: Path = typer.Option(..., "--site-dir", help="Site directory (created if new)."),
    size: int = typer.Option(256, "--size", help="Side of the stored square images, px.",
                             callback=positive),
    test_fraction: float = typer.Option(0.2, "--test-fraction",
                                        help="Share of patients in the test split.",
                                        callback=fraction),
    workers: int = typer.Option(0, "--workers", help="Worker processes (0 = all cores).",
                                callback=non_negative),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per store shard.",
                                   callback=positive),
    min_side: int = typer.Option(128, "--min-side",
                                 help="Skip images whose smallest side is under this (the "
                                      "seed rule is 128; lower it only for small phantoms).",
                                      callback=positive),
    allow_burned_in: bool = typer.Option(
        False, "--allow-burned-in", help="Also ingest DICOMs marked BurnedInAnnotation = YES "
        "(text such as a name burned into the pixels), after checking them by eye; skipped "
        "as burned-in-annotation otherwise."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or skip lines."),
) -> None:
    """Ingest DICOM radiographs into the site store: pixels normalised, labels, patient split.

    Incremental: a re-run processes only new files, and resumes an interrupted run. Every
    unusable file is skipped with a one-line reason. Exit 0 when the store holds at least
    one image afterwards.
    """
    from node.commands.inspect import render_summary
    from node.errors import IngestError
    from node.ingest import REPORT_NAME, preprocess

    report = preprocess(dicom_dir, labels, site_dir, size=size, test_fraction=test_fraction,
                        workers=workers or None, progress=not quiet, batch_size=batch_size,
                        min_side=min_side, allow_burned_in=allow_burned_in)
    store = report["store"]
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        render_summary(store, title=f"Site store {site_dir}")
        reasons = ", ".join(f"{k} {v}" for k, v in report["skip_reasons"].items()) or "none"
        typer.echo(
            f"This run: {report['processed']} new file(s), {report['accepted']} accepted, "
            f"{report['skipped']} skipped ({reasons}), {report['already_in_store']} already "
            f"in the store; {report['seconds']:.1f} s. Report: "
            f"{Path(site_dir) / 'store' / REPORT_NAME}"
        )
    if store["images"] == 0:
        raise IngestError(
            f"{dicom_dir}: no image was accepted ({report['skipped']} file(s) skipped: "
            f"{', '.join(report['skip_reasons']) or 'no files found'}). Check the reasons "
            "above and that --labels names these files"
        )
