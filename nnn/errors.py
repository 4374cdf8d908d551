"""Exceptions shared across the project, and which of them are the user's to fix.

A *user error* is an expected, explained situation: a setting that cannot work (``ValueError``
from an input check, e.g. ``method.k`` larger than the references, ``device=cuda`` without
CUDA), a dataset, file or model that is not on disk (``MissingResourceError``,
``FileNotFoundError``), a failed download or other ``OSError``, a corrupt download
(``nnn.data.download.ChecksumError``). Its message names the value and what to do, so
``run.py`` (``user_error``) prints that one line and exits 1 (the traceback with
``HYDRA_FULL_ERROR=1``). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MissingResourceError(RuntimeError):
    """A dataset, file or model the run needs is not on disk; the message says how to get it."""

