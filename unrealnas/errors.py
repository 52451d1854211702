"""User-facing errors: one clear line naming the thing and the fix, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (config, dataset, checkpoint) that the user can fix.

    The CLI prints ``error: <message>`` on one line and exits with status 2; set
    ``UNREALNAS_DEBUG=1`` to see the traceback too.
    """


class DataError(UserError):
    """A dataset is missing, malformed or corrupt."""


class ConfigError(UserError):
    """A configuration value is unknown, of the wrong type or out of range."""


class CheckpointError(UserError):
    """A checkpoint is corrupt or belongs to another run."""


class NonFiniteError(UserError):
    """A loss or metric became NaN or infinite (diverged training)."""
