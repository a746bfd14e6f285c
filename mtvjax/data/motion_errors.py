"""The errors motion loaders raise for users' files: unusable content, files over a load bound,
pickles that reference code."""
from __future__ import annotations

import pickle

from mtvjax.errors import UserError


class MotionFormatError(ValueError):
    """A motion file (or one clip in it) cannot be used; the message starts with its source."""

    def __init__(self, source, problem: str):
        super().__init__(f"{source}: {problem}")
        self.source = str(source)
        self.problem = problem


class LimitExceededError(MotionFormatError):
    """A file describes more data, nesting or entries than the loader's bounds allow."""


class UnsafePickleError(pickle.UnpicklingError, UserError):
    """The pickle references something other than plain data."""
