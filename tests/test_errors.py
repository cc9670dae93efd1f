"""The error policy of the ``advbias`` command line: the user's errors are one line, bugs are bugs.

A problem the user can fix (an :class:`~advbias.errors.InputError`, or a file error on a path)
is one line ``advbias: error: ...`` and exit status 2; anything else prints its traceback and
one line ``advbias: internal error: ...`` with exit status 1.
"""
from __future__ import annotations

import errno
from pathlib import Path

import pytest

from advbias.cli import main
from advbias.errors import CLIError, InputError, InputFileExists, InputFileNotFound, user_error
from advbias.setdir import SetFileError


def test_the_user_error_types_are_value_errors_and_file_errors() -> None:
    assert issubclass(CLIError, InputError) and issubclass(InputError, ValueError)
    assert issubclass(SetFileError, InputError)
    assert issubclass(InputFileNotFound, FileNotFoundError) and issubclass(InputFileExists, FileExistsError)
    from experiment.commands import CommandError

    assert issubclass(CommandError, InputError)


def test_which_exceptions_are_the_users(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        open(tmp_path / "nope.csv")  # what a reader of a path the user named raises
    assert user_error(missing.value)
    with pytest.raises(IsADirectoryError) as folder:
        open(tmp_path)
    assert user_error(folder.value)
    assert user_error(InputError("--eps: 'x' is not a whole number"))
    assert not user_error(ValueError("operands could not be broadcast together"))
    assert not user_error(OSError(errno.EIO, "input/output error"))  # no path: not something the user named
    assert not user_error(FileNotFoundError("a package file is missing"))
    assert not user_error(KeyError("eps"))


def test_a_users_mistake_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["stimuli", "generate", "--images", "builtin", "--pairs", "cat", "--eps", "4",
                   "--out", str(tmp_path / "set")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and err.startswith("advbias: error: --pairs:"), err



def test_an_unexpected_exception_in_the_api_is_a_json_500(client, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """The API's own refusals are JSON 4xx; a bug is a JSON 500 that gives nothing away, logged with its traceback."""
    import experiment.participants

    assert client.get("/api/v1/participants/" + "0" * 43).status_code in (400, 404)

    def broken_state_of(*_args: object) -> None:  # stands in for a bug below the view
        raise KeyError("trial_index")

    monkeypatch.setattr(experiment.participants, "state_of", broken_state_of)
    reply = client.get("/api/v1/participants/" + "0" * 43)
    assert reply.status_code == 500 and reply.get_json() == {"error": "internal server error"}
    assert "trial_index" not in reply.get_data(as_text=True)
    assert any(record.exc_info and "KeyError" in repr(record.exc_info[1]) for record in caplog.records)
