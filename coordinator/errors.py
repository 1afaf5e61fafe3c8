"""Every error class of the coordinator side, under :class:`CoordinatorError`. Messages name
the file and say what to do."""

from __future__ import annotations

from shared.errors import SynthlearnError


class CoordinatorError(SynthlearnError):
    """Base class for coordinator failures the admin can act on."""


class StateError(CoordinatorError):
    """The coordinator's SQLite state is missing, locked, or from another run."""


class PoolError(CoordinatorError):
    """No bundle could be pooled (every one was rejected, or the folder is empty)."""


class KeyChangedError(StateError):
    """A known site now signs with another key: the run stops until a person checks why."""
