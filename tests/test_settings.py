"""The experiment's settings: resolved once (options, then ADVBIAS_* variables, then defaults), never written back.

Bad values are refused with a message naming where they came from; commands run in-process
leave the environment as they found it, so one test's ``--database-url`` never reaches the next.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from advbias.cli import main
from advbias.errors import InputError
from experiment.settings import DEFAULT_START_LIMIT, DEFAULTS, Settings


def test_options_win_over_the_environment_which_wins_over_defaults(tmp_path: Path) -> None:
    env = {"ADVBIAS_INSTANCE_PATH": str(tmp_path / "from-env"), "ADVBIAS_START_LIMIT": "5/60",
           "ADVBIAS_SECURE_COOKIES": "1", "UNRELATED": "x"}
    s = Settings.resolve({"INSTANCE_PATH": str(tmp_path / "given"), "DATABASE_URL": None}, environ=env,
                         defaults={"SECURE_COOKIES": "0", "TRUSTED_PROXIES": "1"})
    assert s.instance_path == (tmp_path / "given").resolve()  # the option
    assert s.database_url == f"sqlite:///{s.instance_path / 'advbias.db'}"  # None: not given
    assert s.start_limit == (5, 60.0) and s.secure_cookies is True  # the environment, over the caller's default
    assert s.trusted_proxies == 1  # the caller's default
    assert s.stimulus_store == s.instance_path / "stimuli"
    bare = Settings.resolve(environ={})
    assert bare.start_limit == Settings.resolve({"START_LIMIT": DEFAULT_START_LIMIT}, environ={}).start_limit
    assert (bare.secure_cookies, bare.sqlite_synchronous, bare.concurrent_starts) == (True, "FULL", 1)
    with pytest.raises(Exception):
        bare.database_url = "sqlite:///other.db"  # type: ignore[misc]  # frozen


@pytest.mark.parametrize("name, value, message", [
    ("CONCURRENT_STARTS", "many", "ADVBIAS_CONCURRENT_STARTS must be a whole number of starts, not 'many'"),
    ("CONCURRENT_STARTS", "65", "ADVBIAS_CONCURRENT_STARTS must be between 1 and 64, not 65"),
    ("TRUSTED_PROXIES", "-1", "ADVBIAS_TRUSTED_PROXIES must be between 0 and 10"),
    ("SECURE_COOKIES", "maybe", "ADVBIAS_SECURE_COOKIES must be 1 or 0"),
    ("START_LIMIT", "lots", "start limit 'lots' (ADVBIAS_START_LIMIT): write N/SECONDS"),
    ("SQLITE_SYNCHRONOUS", "sometimes", "ADVBIAS_SQLITE_SYNCHRONOUS: SQLite synchronous mode 'SOMETIMES'"),
    ("PUBLIC_URL", "example.org", "ADVBIAS_PUBLIC_URL must start with http:// or https://"),
])
def test_a_bad_value_names_its_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        Settings.resolve(environ={f"ADVBIAS_{name}": value})
    assert message in str(caught.value)
    with pytest.raises(InputError, match=f"^{name} |^start limit|^{name}:"):  # given as an option: its key
        Settings.resolve({name: value}, environ={})


def test_an_unknown_setting_is_refused() -> None:
    with pytest.raises(InputError, match="unknown setting.*DATABASE_ULR"):
        Settings.resolve({"DATABASE_ULR": "sqlite:///x.db"}, environ={})


def test_a_bad_environment_variable_stops_a_command_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ADVBIAS_CONCURRENT_STARTS", "0")
    status = main(["serve", "--instance", str(tmp_path), "--database-url", f"sqlite:///{tmp_path / 'x.db'}",
                   "--port", "5999"])
    err = capsys.readouterr().err
    assert status == 2 and err == "advbias: error: ADVBIAS_CONCURRENT_STARTS must be between 1 and 64, not 0\n"


def test_commands_leave_the_environment_as_they_found_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--instance`` and ``--database-url`` are handed down, not exported: nothing leaks into a later command."""
    before = dict(os.environ)
    url = f"sqlite:///{tmp_path / 'first.db'}"
    assert main(["db", "upgrade", "--instance", str(tmp_path / "first"), "--database-url", url]) == 0
    assert main(["experiment", "list", "--instance", str(tmp_path / "first"), "--database-url", url]) == 0
    assert main(["serve", "--database-url", f"sqlite:///{tmp_path / 'empty.db'}", "--port", "5999"]) == 2
    capsys.readouterr()
    assert dict(os.environ) == before


def test_the_app_takes_its_settings_object(database_url: str, tmp_path: Path) -> None:
    from experiment import create_app

    settings = Settings.resolve({"DATABASE_URL": database_url, "INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "k",
                                 "CONCURRENT_STARTS": "3", "START_LIMIT": "7/70", "SECURE_COOKIES": "0"}, environ={})
    app = create_app({"TESTING": True}, settings=settings)
    try:
        state = app.extensions["advbias"]
        assert state.settings is settings and app.config["ADVBIAS"] is settings
        assert state.start_gate.concurrent == 3 and state.store == tmp_path.resolve() / "stimuli"
        assert app.config["SESSION_COOKIE_SECURE"] is False and app.config["TESTING"] is True
        assert app.test_client().get("/api/v1/health").status_code == 200
    finally:
        app.extensions["advbias"].db.dispose()
    with pytest.raises(TypeError, match="not both"):
        create_app({"DATABASE_URL": database_url}, settings=settings)


@hypothesis_settings(max_examples=300, deadline=None, derandomize=True)
@given(env=st.dictionaries(st.sampled_from([f"ADVBIAS_{k}" for k in DEFAULTS if k != "INSTANCE_PATH"]),
                           st.text(max_size=20)))
def test_any_environment_gives_settings_or_one_clear_error(env: dict[str, str]) -> None:
    """Whatever text a deployment puts in the variables, resolving either succeeds or raises the user's error
    naming the variable, never anything else (a server must not start on a value it misread)."""
    try:
        resolved = Settings.resolve(environ={"ADVBIAS_INSTANCE_PATH": "instance", **env})
    except InputError as exc:
        assert any(name in str(exc) for name in env), (env, str(exc))
    else:
        assert 1 <= resolved.concurrent_starts <= 64 and 0 <= resolved.trusted_proxies <= 10
        assert resolved.sqlite_synchronous in ("FULL", "NORMAL", "EXTRA")
