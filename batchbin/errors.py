"""Errors a user can act on; the CLI prints their message without a traceback."""


class BatchBinError(Exception):
    """A problem with the user's input or setup, with what to do about it."""
