"""Exceptions shared across the project."""


class MissingResourceError(RuntimeError):
    """A dataset, file or model the run needs is not on disk; the message says how to get it."""
