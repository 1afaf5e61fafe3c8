"""`synthlearn node generate`: sample a labelled synthetic set from a trained run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    insert_lesions: str | None = typer.Option(
        None, "--insert-lesions", metavar="CLASS",
        help="Instead of sampling every class: blend patches of this lesion class (from "
             "`node train-patches`) into synthetic normal images; all N images get CLASS."),
    patch_run: str = typer.Option("default", "--patch-run",
                                  help="With --insert-lesions: folder under SITE/patch-runs/."),
    insert_filter: bool = typer.Option(
        False, "--insert-filter/--no-insert-filter",
        help="With --insert-lesions: keep an inserted image only if the classifier S trained on "
             "the real train split scores CLASS above a threshold chosen on that split."),
    filter_quantile: float = typer.Option(
        0.1, "--filter-quantile", callback=probability,
        help="With --insert-filter: the threshold is this quantile of S's CLASS probability "
             "over the real train images of CLASS."),
) -> None:
    """Sample labelled synthetic images from a trained run into SITE/synthetic/<out-name>/.

    Same seed and options give the same images.
    """
    if insert_lesions is not None:
        _insert(site_dir, insert_lesions, n, run_name=run_name, patch_run=patch_run, seed=seed,
                truncation=truncation, out_name=out_name, classifier_filter=insert_filter,
                filter_quantile=filter_quantile)
        return
    from node.generate import generate

    s = generate(site_dir, n, run_name=run_name, truncation=truncation, per_class=per_class,
                 seed=seed, filter_threshold=filter_threshold, out_name=out_name,
                 teacher=teacher)
    typer.echo(json.dumps({"images": len(s), "counts": s.counts(), "filter": s.info["filter"],
                           "teacher": s.soft is not None,
                           "folder": str(site_dir / "synthetic" / out_name)}, indent=2))


def _insert(site_dir: Path, lesion: str, n: int, **options: Any) -> None:
    from node.insertion.insert import insert_lesions

    s = insert_lesions(site_dir, lesion, n, **options)
    typer.echo(json.dumps({"images": len(s), "counts": s.counts(), "inserted": lesion,
                           "filter": s.info["filter"],
                           "folder": str(site_dir / "synthetic" / options["out_name"])},
                          indent=2))
