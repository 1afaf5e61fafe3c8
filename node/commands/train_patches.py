"""`synthlearn node train-patches`: the lesion patch generator used by `generate
--insert-lesions` (node/insertion/patches.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from node.insertion.patches import PATCH_DEFAULTS
from shared.options import non_negative, positive


def command(
    site_dir: Path = typer.Option(..., "--site-dir", help="Site directory with a store."),
    patch_size: int = typer.Option(PATCH_DEFAULTS["patch_size"], "--patch-size",
                                   callback=positive,
                                   help="Side of the patches, a power of two (8–64)."),
    kimg: float | None = typer.Option(PATCH_DEFAULTS["kimg"], "--kimg", callback=positive,
                                      help="Stop after N thousand real crops shown."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", callback=positive,
                                             help="Stop after M minutes."),
    margin: float = typer.Option(PATCH_DEFAULTS["margin"], "--margin", callback=positive,
                                 help="Crop side as a multiple of the box's longer side."),
    min_boxes: int = typer.Option(PATCH_DEFAULTS["min_class_images"], "--min-boxes",
                                  callback=positive,
                                  help="Leave out lesion classes with fewer usable boxes."),
    seed: int = typer.Option(0, "--seed", callback=non_negative),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or cuda:N."),
    run_name: str = typer.Option("default", "--run-name",
                                 help="Folder under SITE/patch-runs/."),
) -> None:
    """Train (or resume) a conditional GAN on crops around the stored lesion boxes."""
    from node.insertion.patches import patch_config, train_patch_generator

    if patch_size not in (8, 16, 32, 64):
        from node.errors import InsertionError

        raise InsertionError(f"--patch-size must be 8, 16, 32 or 64, got {patch_size}")
    cfg = patch_config(patch_size, kimg=kimg, max_minutes=max_minutes, seed=seed,
                       min_class_images=min_boxes, device=device)
    run_dir = train_patch_generator(site_dir, cfg, run_name=run_name, margin=margin)
    summary = json.loads((run_dir / "metrics.json").read_text())
    patches = json.loads((run_dir / "patches.json").read_text())
    typer.echo(json.dumps({"run": str(run_dir), "kimg": summary["kimg"],
                           "wall_s": summary["wall_s"], **patches}, indent=2))
