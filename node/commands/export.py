"""`synthlearn node export`: write the signed bundle that may leave the site."""

from __future__ import annotations

from pathlib import Path

import typer


def command(
    site_dir: Path = typer.Option(..., "--site-dir", help="The site directory."),
    out: Path = typer.Option(..., "--out", help="Bundle file to write, e.g. site-a.slbundle."),
    synthetic: str = typer.Option("default", "--synthetic",
                                  help="Name of the synthetic set (SITE/synthetic/NAME)."),
    accept_risk: str | None = typer.Option(
        None, "--accept-risk",
        help="Export although an audit gate failed; the reason is signed into the bundle."),
    site: str | None = typer.Option(None, "--site",
                                    help="Site pseudonym (default: the one set by keygen --name)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
) -> None:
    """Sign and write synthetic images, labels, metrics, audit summary and DP accounting."""
    from node.export import export_bundle
    from node.site_policy import load_policy

    m = export_bundle(site_dir, out, synthetic, accept_risk, site=site, overwrite=force,
                      lifetime_epsilon=load_policy(site_dir).lifetime_epsilon)
    counts = ", ".join(f"{k}: {v}" for k, v in m["counts"].items())
    typer.echo(f"wrote {out}")
    typer.echo(f"bundle {m['bundle_id']} · site {m['site']} · {m['image_count']} images "
               f"({counts})")
    typer.echo(f"signed by {m['key_fingerprint']}")
    dp = m.get("dp")
    typer.echo(f"DP: ε {dp['epsilon_spent']:.3f} at δ {dp['delta']:.3g}" if dp else
               "DP: none (training was not differentially private)")
    ledger = m.get("privacy_ledger") or {}
    typer.echo(f"privacy ledger: cumulative ε {ledger.get('cumulative_epsilon', 0):g} over "
               f"{ledger.get('dp_runs', 0)} DP run(s) (basic composition)")
    if m.get("accepted_risk"):
        typer.echo(f"accepted risk (signed): {m['accepted_risk']['reason']}", err=True)
