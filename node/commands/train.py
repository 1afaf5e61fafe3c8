"""`synthlearn node train`: train (or resume) a conditional GAN / SpineGAN on the site store."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def command(
    ctx: typer.Context,
    site_dir: Path = typer.Option(..., "--site-dir", help="Site directory with a store."),
    preset: str | None = typer.Option(
        None, "--preset", help="Network preset: cpu (default; lean nets), gpu-64, gpu-128, "
        "gpu-256, gpu-512 (table in node/training/presets.py); options given here win."),
    device: str | None = typer.Option(None, "--device",
                                      help="cpu, cuda or cuda:N (default: CUDA if present)."),
    model: str | None = typer.Option(None, "--model", help="gan (default) or spinegan."),
    resolution: int | None = typer.Option(None, "--resolution",
                                          help="Power of two; default: store size rounded up."),
    kimg: float | None = typer.Option(None, "--kimg", help="Stop after N thousand real images."),
    max_minutes: float | None = typer.Option(None, "--max-minutes",
                                             help="Stop after M minutes."),
    classes: str | None = typer.Option(None, "--classes", help="binary (default) or lesion."),
    batch: int | None = typer.Option(None, "--batch", help="Images per step (default 64)."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (default 0)."),
    run_name: str = typer.Option("default", "--run-name", help="Folder under SITE/runs/."),
    dp_epsilon: float | None = typer.Option(
        None, "--dp-epsilon", help="Train D (and S) with DP-SGD so the whole run spends at most "
        "this ε; needs --kimg to plan the noise."),
    dp_delta: float | None = typer.Option(None, "--dp-delta",
                                          help="δ of the DP guarantee (default 1/n_train)."),
    init_from: Path | None = typer.Option(
        None, "--init-from", help="Start a NEW run from a GAN checkpoint (G/D weights) or a "
        "synthetic set folder (pretrain on it, then fine-tune on the site's real images; "
        "under DP the pretraining costs no ε)."),
    config: Path | None = typer.Option(None, "--config",
                                       help="TOML with more GanConfig keys (table [gan]); "
                                            "options given here override it."),
) -> None:
    """Train on the real train split; re-running the same command resumes the run."""
    from node.training import GanConfig, train
    from node.training.presets import DEFAULT_PRESET, preset_defaults
    from shared.config import read_table, resolve

    from_file = read_table(config, "gan") if config is not None else {}
    name = preset or from_file.get("preset") or DEFAULT_PRESET
    cfg = resolve(GanConfig, ctx, toml=config, table="gan", defaults=preset_defaults(name))
    run_dir = train(site_dir, cfg, run_name=run_name, init_from=init_from)
    typer.echo(json.dumps(json.loads((run_dir / "metrics.json").read_text()), indent=2))
    # After 50 lines of JSON, where the run is and what comes next (stderr: stdout stays JSON).
    named = "" if run_name == "default" else f" --run-name {run_name}"
    typer.echo(f"run saved in {run_dir} (the same command continues it); next: synthlearn "
               f"node generate --site-dir {site_dir}{named} -n N", err=True)
