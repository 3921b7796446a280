"""Errors caused by user input (bad config, file, folder, missing weights).

They carry a message that names the field or file and what would fix it. The CLI prints them as
one line (exit code 2); the UI shows them next to the field. Anything else is a bug.
"""
from __future__ import annotations


class UserError(Exception):
    """Base class: an input problem the user can fix."""


class ConfigError(UserError, ValueError):
    """A config field has an invalid value. `field` names it (dotted path)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class CheckpointError(UserError):
    """A checkpoint file is unreadable, untrusted, or of another architecture."""


class DataError(UserError):
    """A dataset folder or file is missing, empty, or in the wrong layout."""


class MissingWeightsError(UserError):
    """Pretrained weights needed for this operation are not on disk (offline machines)."""
