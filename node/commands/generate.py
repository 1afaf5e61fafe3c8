"""`synthlearn node generate`: sample a labelled synthetic set from a trained run."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from shared.options import non_negative, positive, probability


def command(
    site_dir: Path = typer.Option(..., "--site-dir"),
    n: int = typer.Option(..., "-n", "--n", help="Number of images to keep.", callback=positive),
    run_name: str = typer.Option("default", "--run-name"),
    truncation: float = typer.Option(1.0, "--truncation", help="ψ: 1 = no truncation.",
                                     callback=positive),
    per_class: str = typer.Option("balanced", "--per-class", help="balanced or real."),
    seed: int = typer.Option(0, "--seed", callback=non_negative),
    filter_threshold: float | None = typer.Option(
        None, "--filter", help="Keep a sample only if S gives its class ≥ this probability.",
        callback=probability),
    out_name: str = typer.Option("default", "--out-name", help="Folder under SITE/synthetic/."),
    teacher: bool = typer.Option(
        False, "--teacher/--no-teacher",
        help="Also store S's class probabilities per image (soft labels the coordinator's CNN "
             "learns from; exported as teacher.csv in the bundle)."),
) -> None:
    """Sample labelled synthetic images from a trained run into SITE/synthetic/<out-name>/.

    Same seed and options give the same images.
    """
    from node.generate import generate

    s = generate(site_dir, n, run_name=run_name, truncation=truncation, per_class=per_class,
                 seed=seed, filter_threshold=filter_threshold, out_name=out_name,
                 teacher=teacher)
    typer.echo(json.dumps({"images": len(s), "counts": s.counts(), "filter": s.info["filter"],
                           "teacher": s.soft is not None,
                           "folder": str(site_dir / "synthetic" / out_name)}, indent=2))
