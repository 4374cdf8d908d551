"""Exceptions shared across the project, which of them are the user's to fix, and the house
style of a failed file operation (``explained_os_errors``).

A *user error* is an expected, explained situation: a setting that cannot work (``ValueError``
from an input check, e.g. ``method.k`` larger than the references, ``device=cuda`` without
CUDA), a dataset, file, model or optional package that is not there (``MissingResourceError``,
``MissingDependencyError``, ``FileNotFoundError``), a failed download or other ``OSError``, a
corrupt download (``nnn.data.download.ChecksumError``). Its message names the value and what to
do, so ``run.py`` (``user_error``) prints that one line and exits 1 (the traceback with
``HYDRA_FULL_ERROR=1``). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

#: Hydra's switch for full tracebacks, honoured for user errors too (run.py, nnn-index)
FULL_ERROR_ENV = "HYDRA_FULL_ERROR"


def full_error() -> bool:
    """Whether ``HYDRA_FULL_ERROR=1`` asks for the traceback of a user error too."""
    return os.environ.get(FULL_ERROR_ENV) == "1"


class MissingResourceError(RuntimeError):
    """A dataset, file or model the run needs is not on disk; the message says how to get it."""


class MissingDependencyError(MissingResourceError, ImportError):
    """An optional package the run needs is not installed; the message names the package and
    how to install it. Also an ``ImportError``, for code that catches that."""


@contextmanager
def explained_os_errors(action: str, path: str | Path, remedy: str):
    """An ``OSError`` of the block is raised again as one line in the house style, "could not
    ``action`` 'path' (the system's reason): ``remedy``", instead of "[Errno 13] Permission
    denied: '...'" (the original is its ``__cause__``)."""
    try:
        yield
    except OSError as err:
        raise OSError(f"could not {action} {str(path)!r} ({err.strerror or err}): {remedy}") \
            from err
