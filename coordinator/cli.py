"""`synthlearn coordinator …` (and the root-level `demo`). Registration only."""

from __future__ import annotations

import typer

app = typer.Typer(help="Verify and pool site bundles, train the downstream CNN, report.",
                  no_args_is_help=True)

# One module per command; add a line here when a command works.


def register_root(root: typer.Typer) -> None:
    """Commands that live at the top level (`synthlearn demo`)."""
