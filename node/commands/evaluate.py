"""`synthlearn node evaluate`: AUC + CI of given CNN weights on the site's real test split."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def command(
    site_dir: Path = typer.Option(..., "--site-dir", help="The site directory (with a store)."),
    weights: Path = typer.Option(None, "--weights", help="CNN weights (npz from synthlearn)."),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
    request: Path = typer.Option(None, "--request", help="Air-gapped sites: the coordinator's "
                                 "request.json (weights beside it); writes a signed reply-SITE."
                                 "json next to it to carry back."),
    policy: Path = typer.Option(None, "--policy", help="Site policy TOML, if not SITE/site.toml:"
                                " the same file given to `synthlearn node join --policy`."),
) -> None:
    """Score CNN weights on this site's real test split; numbers only leave this command."""
    from node.commands.baseline import print_record
    from node.evaluate import evaluate_weights

    if request is not None:
        from node.federation import answer_request_file

        typer.echo(f"signed reply: {answer_request_file(request, site_dir, policy_file=policy)}")
        return
    if weights is None:
        raise typer.BadParameter("give --weights FILE.npz or --request request.json")
    from node.site_policy import load_policy

    # the admin's own policy applies here too, as for a coordinator's request
    limits = load_policy(site_dir, policy)
    record = evaluate_weights(site_dir, weights, max_candidates=limits.max_candidates,
                              batchnorm=limits.batchnorm)
    if as_json:
        typer.echo(json.dumps(record, indent=2, sort_keys=True))
    else:
        print_record(record, f"Evaluation of {weights.name} on {site_dir}")
        path = site_dir / "metrics" / f"evaluation-{record['weights_sha256'][:12]}.json"
        typer.echo(f"saved {path}")
