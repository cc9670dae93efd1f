"""The error types for problems a user can fix.

:class:`InputError` is a ``ValueError`` that says "the user's input is wrong, and this
message tells them how": a bad option, a bad file they named, a bad setting. The
``advbias`` command line prints its first line and exits with status 2. Any other
exception that reaches the command line is a bug in advbias and is reported as one
(traceback, then ``advbias: internal error: ...``, exit status 1): see
:func:`advbias.cli.main`.
"""
from __future__ import annotations


class InputError(ValueError):
    """A problem with the user's input (an option, a file they named, a setting) that they can fix.

    Library code raises it (or a subclass) wherever it validates what a user wrote, so the
    same message reaches ``advbias ...``, ``python -m advbias`` and a caller in Python alike;
    being a ``ValueError``, it is caught by code that catches those.
    """


class CLIError(InputError):
    """An :class:`InputError` found by a command itself (an option, a combination of options)."""


class InputFileNotFound(InputError, FileNotFoundError):
    """A file or folder the user named (or one it must hold) does not exist."""


class InputFileExists(InputError, FileExistsError):
    """A file or folder the user named as output is already there and cannot be used."""


#: File errors that are the user's to fix when they carry the path they failed on (``filename``).
PATH_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's to fix: an :class:`InputError`, or a file error on a named path.

    A file error that carries its path (``open(path)`` failing, say) is about a file the user
    named or a folder it lives in; one without a path comes from deeper down and is a bug.
    """
    return isinstance(exc, InputError) or (isinstance(exc, PATH_ERRORS) and exc.filename is not None)
