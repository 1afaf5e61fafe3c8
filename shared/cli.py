"""The one console script, `synthlearn`. This module only registers sub-apps.

Sub-apps are found through entry points that ``pyproject.toml`` declares (group
``synthlearn.apps``: ``node``, ``coordinator``, ``audit``; group ``synthlearn.commands``:
root-level commands such as ``demo``). Why not import them here: ``shared/`` is what both
sides import, so it must import neither ``node`` nor ``coordinator`` (ARCHITECTURE.md, import
rules); the installed distribution, not this module, knows which packages it ships.

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
    rich_markup_mode=None,
)


APP_GROUP = "synthlearn.apps"
"""Entry-point group of the sub-apps (a ``typer.Typer`` each)."""
COMMAND_GROUP = "synthlearn.commands"
"""Entry-point group of root-level commands (a function each)."""
_ORDER = ("node", "coordinator", "audit")
"""Help lists the sub-apps in the order a user meets them; others follow alphabetically."""


def _register() -> None:
    from importlib.metadata import entry_points

    subs = sorted(entry_points(group=APP_GROUP),
                  key=lambda e: (_ORDER.index(e.name) if e.name in _ORDER else len(_ORDER),
                                 e.name))
    for entry in subs:
        sub = entry.load()
        # Only sub-apps with working commands are listed.
        if sub.registered_commands or sub.registered_groups:
            app.add_typer(sub, name=entry.name)
    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        app.command(entry.name)(entry.load())
    if not subs:
        # An install from before the entry points existed (or a bare source tree).
        app.callback(invoke_without_command=True)(_not_installed)


def _not_installed() -> None:
    """Say how to fix a missing registration instead of offering an empty command list."""
    from shared.errors import SynthlearnError

    raise SynthlearnError("no synthlearn sub-apps are registered: reinstall the package "
                          "(`pip install -e .` in the repository, or `make install`)")


_register()


def _one_line(message: str) -> None:
    """``error: …`` in red on stderr; the message is plain text (a ``[gan]`` stays visible)."""
    from rich.text import Text

    from shared.progress import stderr_console

    text = Text("error: ", style="bold red")
    text.append(" ".join(message.split()))
    stderr_console.print(text, soft_wrap=True)


def main() -> None:
    """Entry point: known errors become one red line and exit status 2, not a traceback."""
    try:
        # In non-standalone mode click *returns* the code of a `typer.Exit(n)` raised by a
        # command instead of raising it; pass it on so `raise typer.Exit(130)` reaches the shell.
        rc = app(standalone_mode=False)
    except SynthlearnError as exc:
        _one_line(str(exc))
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit codes
        import click

        if isinstance(exc, click.exceptions.UsageError) and not isinstance(
                exc, click.exceptions.NoArgsIsHelpError):
            # A bad option value or a missing argument: one line naming it, like our errors
            # (`--epochs: 'abc' is not a valid integer`), not a usage box.
            _one_line(exc.format_message())
            sys.exit(2)
        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)
