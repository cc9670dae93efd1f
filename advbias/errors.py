"""The one error type for problems a user can fix."""
from __future__ import annotations


class CLIError(Exception):
    """A problem with the user's input: the CLI prints its first line and exits with status 2.

    Library code raises it (or ``ValueError``/``FileNotFoundError``) for anything the
    user can correct, so the same message reaches ``advbias ...``, ``python -m advbias``
    and a caller in Python alike.
    """
