"""`synthlearn coordinator forget-key SITE`: accept a site's rotated key, after checking it.

Why a command and not automatic: a known site whose bundles, replies or pings suddenly carry
another key stops the run (:class:`coordinator.errors.KeyChangedError`). That is either a
rotation (``node keygen --rotate``) or an impostor; only a person who read the new
fingerprint to the site's admin can tell. Replace ``SITE.pub`` in the trust folder, then run
this, and the next run records the new key.
"""

from __future__ import annotations

from pathlib import Path

import typer


def command(
    site: str = typer.Argument(..., help="The site pseudonym whose key was rotated."),
    work: Path = typer.Option(Path("coordinator-work"), "--work", help="Coordinator folder."),
) -> None:
    """Forget the key this coordinator recorded for SITE (after a confirmed rotation)."""
    from coordinator.errors import StateError
    from coordinator.state import CoordinatorState

    state = CoordinatorState(work / "state.db")
    if not state.forget_site_key(site):
        raise StateError(f"{work / 'state.db'}: no site named {site!r} is recorded")
    typer.echo(f"forgot the recorded key of {site}; its next bundle or ping records the key "
               "now in the trust folder")
