"""The typed errors of checkpoint loading: each names the file, what is wrong with it, and the fix.

`CheckpointNotFoundError` (nothing where the caller pointed) lives in models/hub.py, beside the resolution
that raises it; these are the errors of files that exist.
"""

from __future__ import annotations


class CheckpointReadError(ValueError):
    """A checkpoint file exists but is unusable: corrupt weights, invalid JSON, impossible config values."""


class UnsupportedModelError(ValueError):
    """The checkpoint's config describes a model other than GPT-2."""


class CheckpointMismatchError(ValueError):
    """Backbone weights that do not fit the model: every missing, unexpected and mis-shaped name at once."""

    def __init__(
        self,
        message: str,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ):
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched  # (name, shape in the checkpoint, shape in the model)
