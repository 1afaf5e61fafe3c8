"""One look for every long-running job: a rich progress bar with rate and ETA.

Bars go to stderr so that stdout stays clean for summaries and JSON; under CI (no TTY) rich
degrades to occasional plain lines instead of a flood of redraws.

The output rule (ARCHITECTURE.md): what a person reads goes through :data:`stderr_console`
(:func:`say`, bars) or ``typer.echo`` (a command's result on stdout); library code that may
run unattended (the ServerApp, a SuperNode) logs with :mod:`logging` instead. No bare print.
"""

from __future__ import annotations

import contextlib
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr_console = Console(stderr=True)


class RateColumn(TextColumn):
    """Items per second with a unit ('files/s', 'img/s', 'kimg/s')."""

    def __init__(self, unit: str) -> None:
        super().__init__("")
        self.unit = unit

    def render(self, task):  # type: ignore[no-untyped-def]  # rich's own untyped signature
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"-- {self.unit}/s", style="cyan")


def progress_bar(unit: str = "it", *, transient: bool = False) -> Progress:
    """A Progress with count, rate, elapsed and ETA; use as a context manager."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=stderr_console,
        transient=transient,
    )


def optional_progress(enabled: bool, unit: str = "it", *, transient: bool = False) -> Any:
    """:func:`progress_bar`, or a context manager yielding ``None`` when bars are off
    (``--no-progress``, worker processes, tests): callers write ``if bar is not None``."""
    return progress_bar(unit, transient=transient) if enabled else contextlib.nullcontext()


def say(message: str) -> None:
    """One plain line for a person, on stderr (no rich markup: names may hold brackets)."""
    stderr_console.print(message, markup=False, highlight=False, soft_wrap=True)


def log_to_stdout() -> None:
    """Send the ``synthlearn`` logger to stdout at INFO, once: a Flower ServerApp's or
    ClientApp's stdout is its process log (`flwr log`, the SuperNode's log file)."""
    import logging
    import sys

    root = logging.getLogger("synthlearn")
    if not any(getattr(h, "_synthlearn", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[synthlearn] %(message)s"))
        handler._synthlearn = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO)
