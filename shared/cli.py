"""The one console script, `synthlearn`. This module only registers sub-apps.

Each command lives in its own module (``node/commands/*.py`` …) and imports heavy
libraries (torch, pydicom, flwr) inside its function, so `synthlearn --help` stays instant.
"""

from __future__ import annotations

import sys

import typer

from shared.errors import SynthlearnError

app = typer.Typer(
    name="synthlearn",
    help="Pool radiograph knowledge across hospitals without pooling patients.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from coordinator.cli import app as coordinator_app
    from coordinator.cli import register_root
    from node.cli import app as node_app
    from shared.audit_cli import app as audit_app

    for sub, name in ((node_app, "node"), (coordinator_app, "coordinator"), (audit_app, "audit")):
        # Only sub-apps with working commands are listed.
        if sub.registered_commands or sub.registered_groups:
            app.add_typer(sub, name=name)
    register_root(app)


_register()


def main() -> None:
    """Entry point: known errors become one red line and exit status 2, not a traceback."""
    try:
        # In non-standalone mode click *returns* the code of a `typer.Exit(n)` raised by a
        # command instead of raising it; pass it on so `raise typer.Exit(130)` reaches the shell.
        rc = app(standalone_mode=False)
    except SynthlearnError as exc:
        from shared.progress import stderr_console

        stderr_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit codes
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)
