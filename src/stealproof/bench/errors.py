"""The benchmark's configuration error (its own module: the config and the suites both raise it)."""

from __future__ import annotations

from stealproof.errors import ConfigError, InputValidationError


class BenchConfigError(ConfigError, InputValidationError):
    """A benchmark config is malformed; the one-line message names the offending key."""
