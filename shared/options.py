"""Range checks for command-line options that set no config dataclass field.

Options that do set a field (``--batch`` → ``GanConfig.batch``) are checked by the dataclass
itself, through :func:`shared.config.resolve`, so a TOML file and the command line obey the
same rule. The rest (``--port``, ``--sites``, ``--gan-minutes``…) use these callbacks; click
turns the raised :class:`typer.BadParameter` into ``error: Invalid value for '--port': …``,
one line, exit 2 (:func:`shared.cli.main`).
"""

from __future__ import annotations

import typer


def positive(value: float | None) -> float | None:
    """> 0 (a count, a size, a time budget)."""
    if value is not None and not value > 0:  # `not >`: NaN fails too
        raise typer.BadParameter(f"must be > 0, got {value}")
    return value


def non_negative(value: float | None) -> float | None:
    """≥ 0 (a seed; a size or worker count where 0 means 'automatic')."""
    if value is not None and not value >= 0:  # `not >=`: NaN fails too
        raise typer.BadParameter(f"must be ≥ 0, got {value}")
    return value


def fraction(value: float | None) -> float | None:
    """Strictly between 0 and 1 (a share of patients)."""
    if value is not None and not 0.0 < value < 1.0:
        raise typer.BadParameter(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def probability(value: float | None) -> float | None:
    """In (0, 1] (a threshold on a classifier's probability)."""
    if value is not None and not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"must be in (0, 1], got {value}")
    return value


def port(value: int | None) -> int | None:
    """A TCP port, 1–65535."""
    if value is not None and not 1 <= value <= 65535:
        raise typer.BadParameter(f"must be a TCP port (1–65535), got {value}")
    return value
