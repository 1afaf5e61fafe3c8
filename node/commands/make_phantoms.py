"""`synthlearn node make-phantoms OUT --sites 3`: the embedded default data."""

from __future__ import annotations

from pathlib import Path

import typer

from shared.options import non_negative, positive


def command(
    out: Path = typer.Argument(..., help="Folder to write site-a/, site-b/, … into."),
    sites: int = typer.Option(3, "--sites", min=1, help="Number of (non-IID) sites."),
    seed: int = typer.Option(0, "--seed", help="Everything is deterministic by seed.",
                             callback=non_negative),
    scale: float = typer.Option(1.0, "--scale",
                                help="Multiplies the per-site image counts (1.0 ≈ 150–250).",
                                callback=positive),
    size: int = typer.Option(0, "--size", help="Override the matrix's smaller side (px).",
                             callback=non_negative),
) -> None:
    """Write phantom spine radiographs as varied DICOM files + VinDr-style labels.csv per site.

    Each site gets `dicom/*.dcm` (8/12/16-bit, MONOCHROME1/2, windows, rescale, RLE, JPEG
    2000, implicit/explicit VR, fake PHI) and `labels.csv` (image_id,lesion_type + box).
    """
    from node.phantoms import make_sites

    paths = make_sites(out, sites=sites, seed=seed, scale=scale, size=size or None,
                       progress=True)
    for p in paths:
        n = sum(1 for _ in (p / "dicom").glob("*.dcm"))
        typer.echo(f"{p}: {n} DICOM files, labels in {p / 'labels.csv'}")
    first = paths[0]
    typer.echo(f"Next: synthlearn node preprocess {first / 'dicom'} --labels "
               f"{first / 'labels.csv'} --site-dir SITE_DIR")
