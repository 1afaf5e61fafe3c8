"""`synthlearn node inspect`: what is in a site store, without touching any pixel."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def render_summary(summary: dict[str, object], title: str = "Site store") -> None:
    """Print a store summary as rich tables (shared with `node preprocess`)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    per_class = summary["per_class"]
    assert isinstance(per_class, dict)
    table = Table(title=f"{title}: {summary['images']} images at {summary['size']}²")
    table.add_column("class")
    table.add_column("train", justify="right")
    table.add_column("test", justify="right")
    for name, counts in per_class.items():
        table.add_row(name, str(counts["train"]), str(counts["test"]))
    table.add_row("[bold]total", f"[bold]{summary['train']}", f"[bold]{summary['test']}")
    console.print(table)
    reasons = summary["skip_reasons"]
    assert isinstance(reasons, dict)
    if reasons:
        skipped = Table(title=f"Skipped: {summary['skipped']} files")
        skipped.add_column("reason")
        skipped.add_column("files", justify="right")
        for reason, n in reasons.items():
            skipped.add_row(reason, str(n))
        console.print(skipped)


def command(
    site_dir: Path = typer.Option(..., "--site-dir", help="The site directory to describe."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead."),
) -> None:
    """Print counts per class and split, image size and skip reasons of a site store."""
    from node.store import SiteStore

    summary = SiteStore.open(site_dir).summary()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        render_summary(summary)
