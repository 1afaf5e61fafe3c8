"""`synthlearn audit …`: what an auditor runs, offline, on bundles and signed records."""

from __future__ import annotations

import typer

app = typer.Typer(help="Check signed bundles, metric records and reports offline.",
                  no_args_is_help=True, rich_markup_mode=None)

# One module per command (shared/commands/audit_*.py); add a line here when one works.
from shared.commands import audit_verify  # noqa: E402

app.command("verify")(audit_verify.command)
