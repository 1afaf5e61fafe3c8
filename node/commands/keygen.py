"""`synthlearn node keygen`: the site's Ed25519 signing key (private part never leaves)."""

from __future__ import annotations

from pathlib import Path

import typer


def command(
    site_dir: Path = typer.Option(..., "--site-dir", help="The site directory (keys go in keys/)."),
    name: str | None = typer.Option(None, "--name",
                                    help="Site pseudonym for bundles, e.g. site-a (not the "
                                         "hospital's name)."),
    rotate: bool = typer.Option(False, "--rotate",
                                help="Retire the existing key (kept in keys/retired/) and make "
                                     "a new one."),
) -> None:
    """Make the site's key pair (private key mode 0600) and print the public fingerprint."""
    from node.export import PSEUDONYM_FILE, site_pseudonym
    from shared.files import atomic_write_bytes
    from shared.signing import PUBLIC_NAME, generate_keypair

    key_dir = site_dir / "keys"
    if name is not None:
        site_pseudonym(site_dir, name)  # validates
    fingerprint = generate_keypair(key_dir, rotate=rotate)
    if name is not None:
        atomic_write_bytes(key_dir / PSEUDONYM_FILE, (name + "\n").encode("utf-8"))
    typer.echo(f"fingerprint: {fingerprint}")
    typer.echo(f"public key:  {key_dir / PUBLIC_NAME}")
    typer.echo(f"private key: {key_dir / 'site.key'} (mode 0600; back it up offline, never "
               "send it)")
    typer.echo("Give the public key to the coordinator and read the fingerprint to them over a "
               "second channel; they put it in their trust folder as <site>.pub.")
