"""`synthlearn node train`: train (or resume) a conditional GAN / SpineGAN on the site store."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def command(
    site_dir: Path = typer.Option(..., "--site-dir", help="Site directory with a store."),
    model: str = typer.Option("gan", "--model", help="gan or spinegan."),
    resolution: int | None = typer.Option(None, "--resolution",
                                          help="Power of two; default: store size rounded up."),
    kimg: float | None = typer.Option(None, "--kimg", help="Stop after N thousand real images."),
    max_minutes: float | None = typer.Option(None, "--max-minutes",
                                             help="Stop after M minutes."),
    classes: str = typer.Option("binary", "--classes", help="binary or lesion."),
    batch: int = typer.Option(64, "--batch"),
    seed: int = typer.Option(0, "--seed"),
    run_name: str = typer.Option("default", "--run-name", help="Folder under SITE/runs/."),
    dp_epsilon: float | None = typer.Option(
        None, "--dp-epsilon", help="Train D (and S) with DP-SGD so the whole run spends at most "
        "this ε; needs --kimg to plan the noise."),
    dp_delta: float | None = typer.Option(None, "--dp-delta",
                                          help="δ of the DP guarantee (default 1/n_train)."),
    config: Path | None = typer.Option(None, "--config",
                                       help="TOML with more GanConfig keys (table [gan])."),
) -> None:
    """Train on the real train split; re-running the same command resumes the run."""
    import dataclasses

    from node.training import GanConfig, train
    from shared.config import from_mapping, load_toml, to_dict

    base = load_toml(GanConfig, config, "gan") if config else GanConfig()
    data = to_dict(base)
    data.update(model=model, classes=classes, batch=batch, seed=seed)
    for key, value in (("resolution", resolution), ("kimg", kimg), ("max_minutes", max_minutes),
                       ("dp_epsilon", dp_epsilon), ("dp_delta", dp_delta)):
        if value is not None:
            data[key] = value
    cfg = from_mapping(GanConfig, data)
    assert dataclasses.is_dataclass(cfg)
    run_dir = train(site_dir, cfg, run_name=run_name)
    typer.echo(json.dumps(json.loads((run_dir / "metrics.json").read_text()), indent=2))
