"""`synthlearn node evaluate`: AUC + CI of given CNN weights on the site's real test split."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def command(
    site_dir: Path = typer.Option(..., "--site-dir", help="The site directory (with a store)."),
    weights: Path = typer.Option(..., "--weights", help="CNN weights (npz from synthlearn)."),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
) -> None:
    """Score CNN weights on this site's real test split; numbers only leave this command."""
    from node.commands.baseline import print_record
    from node.evaluate import evaluate_weights

    record = evaluate_weights(site_dir, weights)
    if as_json:
        typer.echo(json.dumps(record, indent=2, sort_keys=True))
    else:
        print_record(record, f"Evaluation of {weights.name} on {site_dir}")
        path = site_dir / "metrics" / f"evaluation-{record['weights_sha256'][:12]}.json"
        typer.echo(f"saved {path}")
