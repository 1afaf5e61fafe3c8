"""`synthlearn coordinator …`. Registration only (``synthlearn demo`` is registered at the
root through the ``synthlearn.commands`` entry point, see pyproject.toml)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Verify and pool site bundles, train the downstream CNN, report.",
                  no_args_is_help=True, rich_markup_mode=None)

# One module per command; add a line here when a command works.
from coordinator.commands import forget_key, pool, report, run, serve, train  # noqa: E402

for _name, _mod in (("serve", serve), ("run", run), ("pool", pool), ("train", train),
                    ("report", report), ("forget-key", forget_key)):
    app.command(_name)(_mod.command)

