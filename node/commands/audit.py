"""`synthlearn node audit`: memorization audit of a synthetic set (local HTML + JSON summary)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def command(
    ctx: typer.Context,
    site_dir: Path = typer.Option(..., "--site-dir", help="The site directory."),
    synthetic: str = typer.Option("default", "--synthetic",
                                  help="Name of the synthetic set (SITE/synthetic/NAME)."),
    config: Path | None = typer.Option(None, "--config",
                                       help="TOML file; its [audit] table sets the gates."),
    encoder: str | None = typer.Option(None, "--encoder",
                                       help="'domain' (default), 'none' (pixels only)."),
    max_copy_rate: float | None = typer.Option(None, "--max-copy-rate",
                                               help="Gate on the copy rate (default 0.10)."),
    max_mia_auc: float | None = typer.Option(None, "--max-mia-auc",
                                             help="Gate on the membership-inference AUC "
                                                  "(default 0.60)."),
    max_epsilon: float | None = typer.Option(None, "--max-epsilon",
                                             help="Also require DP training with ε ≤ this."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
) -> None:
    """Find copies of training images among synthetic ones; exit 1 when a gate fails."""
    from node.audit import AuditConfig, run_audit
    from shared.commands.audit_verify import print_gates
    from shared.config import resolve

    cfg = resolve(AuditConfig, ctx, toml=config, table="audit")
    summary = run_audit(site_dir, synthetic, cfg, progress=not no_progress)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print_gates(summary)
        typer.echo(f"{summary['n_synthetic']} of {summary['n_synthetic_total']} synthetic images "
                   f"audited · near-exact copies {summary['exact_copies']} · copy rate "
                   f"{summary['copy_rate']:.4f} · training images with a copy "
                   f"{summary['train_with_copy']:.4f} · MIA AUC {summary['mia_auc']:.3f} · "
                   f"ε {summary['dp']['epsilon_spent'] if summary['dp'] else 'not private'}")
        if (summary.get("heldout_shift") or {}).get("shifted"):
            typer.echo("note: the held-out split differs from training by itself (exposure, "
                       "scanner, period); see the report")
        typer.echo(f"local report (stays on site): {site_dir / 'audit' / 'report.html'}")
        typer.echo(f"exportable summary: {site_dir / 'audit' / 'summary.json'}")
    if not summary["gates_passed"]:
        typer.echo("audit FAILED: export will be refused without --accept-risk", err=True)
        raise SystemExit(1)
