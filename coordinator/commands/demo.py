"""`synthlearn demo`: the whole federation on built-in phantom data, on this machine.

The work lives in :mod:`coordinator.demo` (a library the benchmarks share); this module
only reads the options and prints where the report is.
"""

from __future__ import annotations

from pathlib import Path

import typer

from coordinator.demo import DEMO_DEFAULTS
from shared.options import positive

_D = DEMO_DEFAULTS


def command(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for everything the "
                             "demo writes (removed and rewritten with --fresh)."),
    sites: int = typer.Option(_D["sites"], "--sites", min=1, max=8,
                              help="Number of phantom sites."),
    scale: float = typer.Option(_D["scale"], "--scale", min=0.05, help="Phantom image count "
                                "factor (1.0 = 700 / 360 / 600 images at sites a / b / c).",
                                callback=positive),  # click's min= lets NaN through
    size: int = typer.Option(_D["size"], "--size", help="Store / GAN resolution (power of "
                             "two).", callback=positive),
    model: str = typer.Option(_D["model"], "--model", help="gan or spinegan (each site's "
                              "generator)."),
    classes: str = typer.Option(_D["classes"], "--classes", help="binary (finding vs none) or "
                                "lesion (the 5 classes: macro AUC and a per-class table)."),
    seed: int = typer.Option(_D["seed"], "--seed", min=0, help="Seed of the phantom data, the "
                             "GANs and the CNNs."),
    gan_minutes: float = typer.Option(_D["gan_minutes"], "--gan-minutes", help="GAN training "
                                      "budget per site (the sites train in parallel).",
                                      callback=positive),
    n_synthetic: int = typer.Option(_D["n_synthetic"], "--n-synthetic", help="Synthetic images "
                                    "per site.", callback=positive),
    cnn_minutes: float = typer.Option(_D["cnn_minutes"], "--cnn-minutes",
                                      help="Downstream CNN budget.", callback=positive),
    rounds: int = typer.Option(_D["rounds"], "--rounds", min=1, max=2, help="2: a second "
                               "round in which each site pretrains on the other sites' "
                               "synthetic images, then fine-tunes on its own (≈ twice the "
                               "GAN time)."),
    engine: str = typer.Option("deployment", "--engine", help="'deployment' (real SuperLink "
                               "and SuperNodes) or 'simulation' (needs synthlearn[simulation])."),
    fresh: bool = typer.Option(True, "--fresh/--resume", help="Start from scratch, or resume "
                               "an interrupted demo in the same folder."),
    timeout_minutes: float = typer.Option(30.0, "--timeout-minutes",
                                          help="Give up on the Flower run after this long.",
                                          callback=positive),
) -> None:
    """Run the whole federation on phantom data for 3 sites and write the report."""
    from coordinator.errors import CoordinatorError

    if classes not in ("binary", "lesion"):
        raise CoordinatorError(f"--classes must be 'binary' or 'lesion', not {classes!r}")
    if engine not in ("deployment", "simulation"):
        raise CoordinatorError(f"--engine must be 'deployment' or 'simulation', not {engine!r}")
    if engine == "simulation":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise CoordinatorError(
                "--engine simulation needs Flower's simulation extra (Ray): pip install "
                "'synthlearn[simulation]'; the default --engine deployment needs nothing "
                "extra") from None
        raise CoordinatorError(
            "--engine simulation: not available in this version (the simulation engine passes "
            "only partition-id/num-partitions as node config, so each virtual site cannot be "
            "given its own site folder and key); use the default --engine deployment")
    from shared.flower_proc import Interrupted, stop_flower_on_signals

    try:
        from coordinator.demo import run_demo

        with stop_flower_on_signals():
            result = run_demo(out, sites=sites, scale=scale, size=size, model=model,
                              gan_minutes=gan_minutes, classes=classes, seed=seed,
                              n_synthetic=n_synthetic, cnn_minutes=cnn_minutes, fresh=fresh,
                              rounds=rounds,
                              timeout=timeout_minutes * 60)
    except KeyboardInterrupt as exc:
        typer.echo("interrupted: every process the demo started has been stopped; "
                   "`synthlearn demo --resume` continues from the last completed phase",
                   err=True)
        raise typer.Exit(128 + exc.signum if isinstance(exc, Interrupted) else 130) from None
    typer.echo(f"\nReport: {result['report_html']}")
    typer.echo(f"Timing: {out / 'demo-timing.json'} (total {result['total_seconds']:.0f} s)")
