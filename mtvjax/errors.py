"""Which failures are the user's (bad input, bad flags, full disk) and how the commands report them.

`UserError` is the project's base class for expected failures; `UsageError` (bad flags or config,
exit status 2) derives from it. `classify(error)` tells whether any exception is expected — those
print one line and exit non-zero — or a bug, which keeps its traceback. This module imports
nothing of the project, so every layer may derive its errors from `UserError`.
"""
from __future__ import annotations

import errno
import os
import traceback

EXIT_DATA = 1      # bad input files, missing paths, full disk, non-finite results
EXIT_USAGE = 2     # bad flags, unknown or invalid config keys


class UserError(Exception):
    """An expected failure caused by the user's input; its message names the file or key."""

    exit_code = EXIT_DATA


class UsageError(UserError):
    """Bad flags, arguments or config overrides."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError, ValueError):
    """A config value that cannot work (unknown key, wrong type, batch size 0, ...)."""


OS_EXPECTED = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError)
ERRNO_EXPECTED = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOENT, errno.EACCES,
                  errno.EISDIR, errno.ENOTDIR, errno.EEXIST)
MAX_CHARS = 600    # of a one-line message
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROJECT_DIRS = tuple(os.path.join(_ROOT, d) + os.sep for d in ("mtvjax", "data_pipeline", "configs"))


def raised_by_project(error: BaseException) -> bool:
    """True when the innermost frame that raised `error` is project code (not a library)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PROJECT_DIRS)


def classify(error: BaseException) -> int | None:
    """The exit status of an expected failure, or None for a bug (show the traceback).

    Expected: `UserError`; missing/unwritable paths and full disks (`OSError` with an errno);
    `ValueError`s the project raises on purpose (config validation, the loaders' format errors,
    `ConversionError`, `CheckpointError`, ...).
    """
    if isinstance(error, UserError):
        return error.exit_code
    if isinstance(error, OS_EXPECTED) or (isinstance(error, OSError)
                                          and error.errno in ERRNO_EXPECTED):
        return EXIT_DATA
    if isinstance(error, ValueError) and raised_by_project(error):
        return EXIT_DATA
    return None


def one_line(error: BaseException) -> str:
    """`error`'s message on one line (an `OSError` with its file name, the cause for others)."""
    if isinstance(error, OSError) and error.filename and str(error.filename) not in str(error):
        text = f"{error.filename}: {error.strerror or error}"
    else:
        text = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])
    text = " ".join(text.split())
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + " ..."
