"""Every error class of the hospital side, under :class:`NodeError`. Messages name the file and
say what to do; the CLI prints them as one line and exits 2."""

from __future__ import annotations

from shared.errors import RequestRefusedError, SynthlearnError


class NodeError(SynthlearnError):
    """Base class for hospital-side failures the site admin can act on."""


class StoreError(NodeError):
    """The site store is missing, incomplete or incompatible with the request."""


class IngestError(NodeError):
    """A whole ingestion run cannot proceed (not a single bad file: those are skipped)."""


class TrainingError(NodeError):
    """GAN / classifier training cannot start or resume."""


class CheckpointError(TrainingError):
    """A checkpoint is missing, corrupt, or belongs to another configuration."""


class DeviceError(TrainingError):
    """The requested device is absent, or the configuration cannot fit on it."""


class DPBudgetError(TrainingError):
    """The requested (ε, δ) cannot be met for these settings; the message gives the minimum."""

    def __init__(self, message: str, smallest_epsilon: float | None = None) -> None:
        super().__init__(message)
        self.smallest_epsilon = smallest_epsilon


class ExportError(NodeError):
    """Export refused (failed or stale audit, missing inputs); the message says what to do."""


class AuditError(NodeError):
    """The audit cannot run (no synthetic set, too few held-out images, mismatched sizes)."""


class SkipFileError(NodeError):
    """One source file cannot be used; the run goes on. ``reason`` is a short category."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class ReaderStudyError(NodeError):
    """The reader study cannot start or an answer cannot be taken; the message says why."""


class LedgerError(NodeError):
    """The privacy ledger is unreadable: the site cannot know what it has spent, so it stops."""


class PrivacyBudgetError(NodeError, RequestRefusedError):
    """Work refused: it would take the site past the lifetime ε its admin set."""


class ClassMismatchError(NodeError, RequestRefusedError):
    """Weights or a synthetic set use another class list than this site's store: scoring them
    would compare class 2 with whatever this site calls class 2 (both lists in the message)."""


class InsertionError(NodeError):
    """Lesion insertion cannot run: unknown class, no stored boxes for it, or a patch
    generator that does not fit the request; the message says what differs."""
