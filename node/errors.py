"""Errors raised on the hospital side. Messages name the file and say what to do."""

from __future__ import annotations

from shared.errors import SynthlearnError


class StoreError(SynthlearnError):
    """The site store is missing, incomplete or incompatible with the request."""


class IngestError(SynthlearnError):
    """A whole ingestion run cannot proceed (not a single bad file: those are skipped)."""


class TrainingError(SynthlearnError):
    """GAN / classifier training cannot start or resume."""


class CheckpointError(TrainingError):
    """A checkpoint is missing, corrupt, or belongs to another configuration."""


class DeviceError(TrainingError):
    """The requested device is absent, or the configuration cannot fit on it."""
