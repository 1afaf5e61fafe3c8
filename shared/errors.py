"""Every error class of ``shared/`` (and the base class of all synthlearn errors).

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


class SyntheticSetError(SynthlearnError):
    """A synthetic set folder is missing or inconsistent."""


class EncoderError(SynthlearnError):
    """An encoder cannot be built (unknown name, missing or wrong weights file)."""


class MetricError(SynthlearnError):
    """A metric cannot be computed from the given inputs (e.g. one class only)."""


class ClassifierTrainingError(SynthlearnError):
    """The downstream CNN cannot be trained on the data it was given."""


class SigningError(SynthlearnError):
    """A key or signature problem. ``reason`` is a short stable code for programs."""

    def __init__(self, message: str, reason: str = "signing") -> None:
        super().__init__(message)
        self.reason = reason


class KeyMissingError(SigningError):
    """No private key where one was expected (run ``synthlearn node keygen``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="missing-key")


class SignatureError(SigningError):
    """A signed record or bundle signature does not verify, or its key is not trusted."""


class WeightsError(SynthlearnError):
    """A weights file is missing, not an npz state dict, or does not fit the network."""


class BundleError(SynthlearnError):
    """A bundle cannot be written or does not verify; ``reason`` is a short stable code."""

    def __init__(self, message: str, reason: str, path: Path | str | None = None) -> None:
        where = f"{path}: " if path is not None else ""
        super().__init__(f"{where}{message} [{reason}]")
        self.reason = reason
        self.path = path
