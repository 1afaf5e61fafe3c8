"""`synthlearn node join`: connect this site to the coordinator as a Flower SuperNode."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from shared.options import port, positive


def command(
    ctx: typer.Context,
    superlink: str = typer.Option(None, "--superlink", help="HOST:PORT of the coordinator's "
                                  "public Fleet port. Required unless --make-auth-key."),
    site_dir: Path = typer.Option(..., "--site-dir", help="This site's folder (store, keys)."),
    root_cert: Path = typer.Option(None, "--root-cert", help="The federation's CA certificate "
                                   "(ca.crt from the coordinator). Required unless --insecure."),
    auth_key: Path = typer.Option(None, "--auth-key", help="This SuperNode's private key "
                                  "(ECDSA, OpenSSH format; default SITE/keys/supernode when "
                                  "it exists; its .pub is registered by the coordinator)."),
    make_auth_key: bool = typer.Option(False, "--make-auth-key", help="Make this site's "
                                       "SuperNode key pair in SITE/keys/ (the private half "
                                       "never leaves), print the .pub to send to the "
                                       "coordinator, and exit."),
    app_key: Path = typer.Option(None, "--app-key", help="The coordinator operator's "
                                 "app-signing public key (app-signing.pub, ssh-ed25519): the "
                                 "SuperNode runs only apps it signed. Required."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS: loopback tests only; "
                                  "refused for any other address."),
    site: str = typer.Option("", "--site", help="Pseudonym (default: keys/pseudonym)."),
    allow_train: bool = typer.Option(False, "--allow-train/--no-train", help="Train a GAN "
                                     "when the coordinator asks ('train' mode), or only export "
                                     "bundles you trained and audited yourself (default, or "
                                     "[policy] allow_train in SITE/site.toml)."),
    max_train_minutes: float = typer.Option(60.0, "--max-train-minutes", help="Upper bound on "
                                            "GAN training time per request, whatever is asked "
                                            "(default, or [policy] in SITE/site.toml).",
                                            callback=positive),
    policy: Path = typer.Option(None, "--policy", help="Site policy TOML ([policy], [audit] "
                                "and [classifier] tables; default SITE/site.toml): what the "
                                "coordinator may ask of this site."),
    accept_risk: str = typer.Option("", "--accept-risk", help="Export even when an audit gate "
                                    "fails, with this reason signed into the bundle."),
    port: int = typer.Option(9094, "--port", help="Local port of the SuperNode's ClientApp API.",
                             callback=port),
    work: Path = typer.Option(None, "--work", help="Folder for FLWR_HOME and the log "
                              "(default: SITE/flower)."),
) -> None:
    """Start `flower-supernode` for this site and keep it running until Ctrl-C.

    The site directory and key are passed as node config; the coordinator never chooses
    them. Only what DESIGN §2 allows ever leaves: signed bundles and signed numbers.
    """
    from node.errors import StoreError
    from shared.app_signing import write_trusted_entities
    from shared.flower_proc import Interrupted, start_supernode, stop_flower_on_signals

    if make_auth_key:
        from shared.flower_keys import make_supernode_key

        key_dir = site_dir.absolute() / "keys"
        if (key_dir / "supernode").exists():
            raise StoreError(f"{key_dir / 'supernode'} exists; keep it (its .pub is "
                             f"{key_dir / 'supernode.pub'}) or move it away first")
        priv, pub = make_supernode_key(key_dir, "supernode")
        typer.echo(f"SuperNode key: {priv} (mode 0600, stays here)")
        typer.echo(f"Send {pub} to the coordinator to be registered; then run `node join` "
                   "again without --make-auth-key.")
        return
    if not superlink:
        raise StoreError("give --superlink HOST:PORT (the coordinator's public Fleet port)")
    if app_key is None:
        raise StoreError("give --app-key (the coordinator operator's app-signing.pub): "
                         "without it this SuperNode would run any app that reaches it")
    if root_cert is None and not insecure:
        raise StoreError("give --root-cert (the federation's ca.crt), or --insecure for a "
                         "loopback test")
    site_dir = site_dir.absolute()
    if not (site_dir / "site.json").exists():
        raise StoreError(f"{site_dir}: not a site folder (no site.json); run `synthlearn node "
                         "preprocess` first")
    if not (site_dir / "keys" / "site.key").exists():
        raise StoreError(f"{site_dir / 'keys'}: no site key; run `synthlearn node keygen "
                         f"--site-dir {site_dir} --name PSEUDONYM` and send keys/site.pub to the "
                         "coordinator")
    from node.site_policy import load_policy
    from shared.config import passed_options

    # Only the policy options the admin typed go into the node config: a CLI default must
    # never override what the site TOML says.
    given = passed_options(ctx)
    cfg: dict[str, str | bool | float] = {"site-dir": str(site_dir)}
    for name in ("allow_train", "max_train_minutes"):
        if name in given:
            cfg[name.replace("_", "-")] = given[name]
    if policy is not None:
        cfg["policy-file"] = str(policy.absolute())
    effective = load_policy(site_dir, policy, {k: given[k] for k in
                                               ("allow_train", "max_train_minutes") if k in given})
    if effective.baseline_recipe == "site":
        from node.baseline import site_recipe

        # Read on a training request, maybe hours from now: a typo in [classifier] stops here.
        site_recipe(site_dir, policy)
    typer.echo(f"site policy: train on request {'yes' if effective.allow_train else 'no'}; "
               f"DP {'required' if effective.require_dp else 'optional'} (ε ≤ "
               f"{effective.max_epsilon_per_run:g} per run, lifetime "
               f"{effective.lifetime_epsilon if effective.lifetime_epsilon else 'uncapped'}); "
               f"≤ {effective.max_evaluations_per_run} evaluations per run, "
               f"{effective.max_evaluations_per_day} per day; ≤ {effective.max_candidates} "
               f"candidate CNNs, BatchNorm {effective.batchnorm}; baseline recipe: the "
               f"{effective.baseline_recipe}'s")
    if site:
        cfg["site-name"] = site
    if accept_risk:
        cfg["accept-risk"] = accept_risk
    if auth_key is None and (site_dir / "keys" / "supernode").exists():
        auth_key = site_dir / "keys" / "supernode"
    work = (work or site_dir / "flower").absolute()
    trusted = write_trusted_entities(app_key, work / "trusted-entities.yaml")
    with stop_flower_on_signals():
        proc = None
        try:
            proc = start_supernode(work, "site", superlink, cfg, port=port,
                                   root_cert=root_cert.absolute() if root_cert else None,
                                   auth_key=auth_key.absolute() if auth_key else None,
                                   trusted_entities=trusted)
            typer.echo(f"SuperNode started for {site_dir} → {superlink} "
                       f"({'TLS' if root_cert else 'INSECURE loopback'}; apps signed by "
                       f"{app_key} only); log {proc.log_path}")
            typer.echo("Stop with Ctrl-C (or SIGTERM).")
            while proc.alive():
                time.sleep(0.5)
            raise StoreError(f"the SuperNode exited ({proc.poll()}); see {proc.log_path}:\n"
                             f"{proc.tail()}")
        except Interrupted as exc:
            typer.echo(f"{exc}: stopping the SuperNode", err=True)
            raise typer.Exit(128 + exc.signum) from None
        finally:
            if proc is not None:
                proc.stop()
