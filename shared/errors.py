"""Exceptions shared by node and coordinator.

Every message says what went wrong, with which file, and what to do about it, because the
person reading it is a hospital admin or an auditor, not the author.
"""

from __future__ import annotations

from pathlib import Path


class SynthlearnError(Exception):
    """Base class: the CLI prints these as one clean line instead of a traceback."""


class ConfigError(SynthlearnError):
    """A configuration file or mapping is malformed, has unknown keys or bad values."""

    def __init__(self, message: str, source: str | Path | None = None) -> None:
        where = f"{source}: " if source is not None else ""
        super().__init__(f"{where}{message}")
        self.source = source


class FlowerProcessError(SynthlearnError):
    """A Flower process (SuperLink, SuperNode, `flwr run`) did not start or failed."""


class RunFailedError(SynthlearnError):
    """A Flower run ended in a state other than finished:completed."""


class ProtocolError(SynthlearnError):
    """A request or reply document crossing a site boundary is malformed or not allowed."""


class RequestRefusedError(ProtocolError):
    """The request asks for something a site does not send, or is malformed."""
