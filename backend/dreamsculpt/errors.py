"""Errors a user can act on.

A `DreamsculptError` carries a message that says what went wrong *and what to do*.
The CLI prints it on one line and exits non-zero, never with a traceback.
"""


class DreamsculptError(Exception):
    """A user-facing error: bad input, missing model, nothing to mesh..."""


class NonFiniteError(DreamsculptError):
    """The optimisation produced NaN or Inf values."""


class CancelledError(DreamsculptError):
    """The run was cancelled between two steps."""
