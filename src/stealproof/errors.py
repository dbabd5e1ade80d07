"""Exceptions raised by stealproof.

Every error a user can cause is a subclass of :class:`StealproofError`; input
validation errors are also :class:`ValueError` so generic handlers catch them.
"""

from __future__ import annotations


class StealproofError(Exception):
    """Base class for all stealproof errors."""


class InputValidationError(StealproofError, ValueError):
    """An input tensor or argument has the wrong shape, dtype, range or values."""


class BudgetExhaustedError(StealproofError):
    """A black box was asked for more rows than its query budget has left."""

    def __init__(self, used: int, budget: int, requested: int) -> None:
        self.used = used
        self.budget = budget
        self.requested = requested
        super().__init__(
            f"query budget exhausted: {used} of {budget} rows used, "
            f"this batch needs {requested} more"
        )


class DataFileError(StealproofError, ValueError):
    """A dataset file is missing or malformed; the message names the path."""


class UnknownNameError(StealproofError, KeyError):
    """A registry lookup used a name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ClientBlockedError(StealproofError):
    """A client was terminated by a detection policy; its queries are refused."""

    def __init__(self, client_id: str, reason: str) -> None:
        self.client_id = client_id
        self.reason = reason
        super().__init__(f"client {client_id!r} is blocked: {reason}")


class ConfigError(StealproofError, ValueError):
    """A command-line option, config field or parameter has a value that cannot be used."""


class OutputPathError(StealproofError):
    """An output location cannot be written (checked before any work starts)."""


class ArtifactMismatchError(StealproofError):
    """A saved artifact was made for another victim, config or package version."""


class DeviceError(StealproofError):
    """A requested torch device is unknown or not available on this machine."""
