"""`synthlearn node baseline`: local real CNN, AUC + CI on the site's own real test split."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from shared.options import fraction


def print_record(record: dict[str, object], title: str) -> None:
    """One small table of an AUC record (shared with `node evaluate`)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    auc, lo, hi = record["auc"], record["ci_low"], record["ci_high"]
    assert isinstance(auc, float) and isinstance(lo, float) and isinstance(hi, float)
    label = "AUC" if record.get("classes", "binary") == "binary" else "macro AUC"
    table.add_row(label, f"{auc:.3f}  (95% CI {lo:.3f}–{hi:.3f})")
    for key in ("sensitivity", "specificity", "threshold", "accuracy", "n_train", "n_test",
                "n_pos", "n_neg", "recipe", "epochs_run", "optimizer_steps", "stopped",
                "weights_sha256"):
        if record.get(key) is not None:
            v = record[key]
            table.add_row(key, f"{v:.3f}" if isinstance(v, float) else str(v))
    Console().print(table)


def command(
    ctx: typer.Context,
    site_dir: Path = typer.Option(..., "--site-dir", help="The site directory (with a store)."),
    classes: str = typer.Option("binary", "--classes", help="'binary' or 'lesion'."),
    epochs: int | None = typer.Option(None, "--epochs", help="Maximum epochs (default 30; more "
                                  "when needed to reach --min-steps)."),
    width: int | None = typer.Option(None, "--width", help="CNN base width (default 64)."),
    min_steps: int | None = typer.Option(
        None, "--min-steps", help="Train at least this many optimizer steps (even past "
        "--epochs) before early stopping may end it (default 200; 0 = off)."),
    max_minutes: float | None = typer.Option(None, "--max-minutes",
                                             help="Stop training after this wall-clock time."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed."),
    config: Path | None = typer.Option(
        None, "--config", help="TOML file whose [classifier] table sets the recipe, instead "
        "of SITE/site.toml's (a coordinator's request trains the policy file's: SITE/site.toml, "
        "or the file given to `node join --policy`)."),
    with_synthetic: Path | None = typer.Option(
        None, "--with-synthetic", help="A synthetic set folder (e.g. the pooled set sent back "
        "by the coordinator): train on real + synthetic; saved as baseline-with-synthetic.*"),
    synthetic_share: float = typer.Option(
        0.5, "--synthetic-share", help="Share of synthetic images in the mix (0 < s < 1).",
        callback=fraction),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
) -> None:
    """Train a CNN on the site's real train split; save AUC + CI on its real test split."""
    from node.baseline import few_steps_warning, run_baseline, site_recipe
    from node.site_policy import load_policy

    # The same file holds the policy this recipe answers to (`baseline_recipe`): a bad value
    # there stops here, not later at `node join` or `node evaluate`.
    load_policy(site_dir)
    if config is not None:
        from shared.config import read_table
        from shared.errors import ConfigError

        if "classifier" not in read_table(config):
            # e.g. `[classifer]`: the defaults would train, under the admin's name for them.
            raise ConfigError("no [classifier] table; the recipe's keys (width, epochs, "
                              "min_steps, …) go under [classifier]", config)
    cfg = site_recipe(site_dir, config, ctx)
    record = run_baseline(site_dir, cfg, classes=classes, progress=not no_progress,
                          with_synthetic=with_synthetic, synthetic_share=synthetic_share)
    stem = "baseline" if with_synthetic is None else "baseline-with-synthetic"
    if as_json:
        typer.echo(json.dumps(record, indent=2, sort_keys=True))
    else:
        print_record(record, f"Local {'real' if with_synthetic is None else 'real + synthetic'}"
                             f" baseline: {site_dir}")
        typer.echo(f"saved {site_dir / 'metrics' / (stem + '.json')} and {stem}-cnn.npz")
    if (warning := few_steps_warning(record)) is not None:
        typer.echo(f"warning: {warning}", err=True)
