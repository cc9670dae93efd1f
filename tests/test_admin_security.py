"""Admin sessions are revocable and logins back off (SQLite and PostgreSQL).

* A copied admin cookie stops working after logout and after ``admin set-password``
  (the account's session version is raised; the check is in the database, so it holds
  for every server process).
* Repeated wrong passwords block the account and the address with a doubling pause;
  while blocked, even the right password is refused with a clear page and 429, and no
  password is hashed (shown with a stored hash that would fail if it were checked).
"""
from __future__ import annotations

import io
import re
import sys

import pytest
from sqlalchemy import update

from advbias.cli import main

from experiment import accounts
from experiment.accounts import set_password
from experiment.models import Admin

PASSWORD = "correct horse battery"


@pytest.fixture
def cli(monkeypatch, capsys, instance_dir):  # type: ignore[no-untyped-def]
    """Run ``advbias ARGS`` in-process; returns (status, stdout, stderr)."""
    monkeypatch.setenv("ADVBIAS_INSTANCE_PATH", str(instance_dir))

    def run(args: list[str], stdin: str | None = None):  # type: ignore[no-untyped-def]
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        status = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return status, out, err

    return run


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "form without a CSRF token"
    return match.group(1)


def login(client, password: str = PASSWORD, username: str = "admin"):  # type: ignore[no-untyped-def]
    token = csrf_from(client.get("/admin/login").get_data(as_text=True))
    return client.post("/admin/login", data={"username": username, "password": password, "csrf_token": token})


def copy_of(app, client):  # type: ignore[no-untyped-def]
    """A second client (another browser, an attacker) holding a copy of ``client``'s admin cookie."""
    other = app.test_client()
    cookie = client.get_cookie("advbias_admin")
    assert cookie is not None
    other.set_cookie("advbias_admin", cookie.value)
    return other


def test_logout_ends_every_copy_of_the_cookie(app, client, db, experiment) -> None:  # type: ignore[no-untyped-def]
    set_password(db, PASSWORD)
    assert login(client).status_code == 302
    stolen = copy_of(app, client)
    export = f"/admin/experiments/{experiment}/export.csv"
    assert stolen.get(export).status_code == 200  # a copy works while the session lives
    token = csrf_from(client.get("/admin/").get_data(as_text=True))
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    refused = stolen.get(export)
    assert refused.status_code == 302 and refused.headers["Location"].endswith("/admin/login")
    assert stolen.get("/admin/").status_code == 302
    # logging in again issues a new cookie; the old copy stays dead
    assert login(client).status_code == 302
    assert client.get(export).status_code == 200 and stolen.get(export).status_code == 302


def test_set_password_ends_every_session(app, client, db, experiment, cli) -> None:  # type: ignore[no-untyped-def]
    set_password(db, PASSWORD)
    assert login(client).status_code == 302
    stolen = copy_of(app, client)
    assert stolen.get("/admin/").status_code == 200
    status, _out, _err = cli(["admin", "set-password", "--password-stdin", "--database-url", db.url],
                             stdin="a brand new password\n")
    assert status == 0
    assert stolen.get("/admin/").status_code == 302 and client.get("/admin/").status_code == 302
    assert login(client, "a brand new password").status_code == 302


def test_wrong_passwords_block_the_account_without_hashing(client, db, clock) -> None:  # type: ignore[no-untyped-def]
    set_password(db, PASSWORD)
    for _ in range(accounts.ACCOUNT_FAILURES):
        assert login(client, "guess").status_code == 401
    assert login(client, "guess").status_code == 401  # one more failure: the account now pauses for 2 s
    blocked = login(client)  # the right password, while blocked
    page = blocked.get_data(as_text=True)
    assert blocked.status_code == 429 and "too many failed logins" in page and 'data-testid="login-throttled"' in page
    assert int(blocked.headers["Retry-After"]) == 2
    # While blocked nothing is hashed: a stored hash that would raise if checked is never looked at.
    with db.write() as s:
        saved = s.scalar(update(Admin).values(password_hash="nosuchmethod$x$y").returning(Admin.password_hash))
    assert login(client).status_code == 429
    set_password(db, PASSWORD)
    clock.advance(1.9)
    assert login(client).status_code == 429  # not over yet
    clock.advance(0.1)
    assert login(client).status_code == 302, saved  # the pause is over: the right password works again
    assert client.get("/admin/").status_code == 200


def test_the_back_off_doubles(client, db, clock) -> None:  # type: ignore[no-untyped-def]
    set_password(db, PASSWORD)
    for _ in range(accounts.ACCOUNT_FAILURES + 1):
        login(client, "guess")
    clock.advance(2)
    assert login(client, "guess").status_code == 401  # allowed again, fails: now 4 s
    assert int(login(client).headers["Retry-After"]) == 4
    clock.advance(3.9)
    assert login(client).status_code == 429
    clock.advance(0.1)
    assert login(client).status_code == 302


def test_one_address_guessing_many_names_is_blocked(app, db) -> None:  # type: ignore[no-untyped-def]
    set_password(db, PASSWORD)
    guesser = app.test_client()
    guesser.environ_base["REMOTE_ADDR"] = "203.0.113.7"
    for i in range(accounts.ADDRESS_FAILURES + 1):
        assert login(guesser, "guess", username=f"user{i}").status_code == 401
    assert login(guesser, "guess", username="someone-else").status_code == 429
    assert login(guesser).status_code == 429  # the address is paused, even for the right password
    admin = app.test_client()  # the admin, from another address, is not affected
    admin.environ_base["REMOTE_ADDR"] = "198.51.100.1"
    assert login(admin).status_code == 302


def test_throttle_table_holds_no_address_or_name(app, db) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from experiment.models import Throttle

    guesser = app.test_client()
    guesser.environ_base["REMOTE_ADDR"] = "203.0.113.9"
    login(guesser, "guess", username="someone")
    with db.session() as s:
        keys = s.scalars(select(Throttle.key)).all()
    assert keys and all(re.fullmatch(r"[0-9a-f]{64}", k) for k in keys)
    assert not any("203.0.113.9" in k or "someone" in k for k in keys)


def test_the_experiment_page_shows_debrief_answers_and_user_agents(client, db, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    p = participant(experiment)
    base = f"/api/v1/participants/{p.token}"
    assert client.post(f"{base}/consent", json={"consent": True}).status_code == 200
    check = {"window_width": 1280, "window_height": 800, "user_agent": "Mozilla/5.0 (X11) Tested/1.0"}
    assert client.post(f"{base}/browser-check", json=check).status_code == 200
    p.answer_all()
    assert p.finish("the left ones looked <b>grainy</b>").status_code == 200
    set_password(db, PASSWORD)
    assert login(client).status_code == 302
    page = client.get(f"/admin/experiments/{experiment}").get_data(as_text=True)
    assert "Mozilla/5.0 (X11) Tested/1.0" in page
    assert re.search(r"median server time \(ms\)", page) and re.search(r"median rt \(ms\)", page)
    links = re.findall(rf'href="(/admin/experiments/{experiment}/participants/[^"]+)"', page)
    assert links, "the experiment page links each participant's detail page"
    detail = client.get(links[0]).get_data(as_text=True)
    assert "the left ones looked &lt;b&gt;grainy&lt;/b&gt;" in detail and "<b>grainy</b>" not in detail


def test_expired_counters_are_purged(db, clock) -> None:  # type: ignore[no-untyped-def]
    from experiment import throttle

    throttle.hit(db, "a" * 64, 60, clock=clock)
    throttle.hit(db, "b" * 64, 3600, clock=clock)
    assert throttle.purge(db, clock=clock) == 0
    clock.advance(61)
    assert throttle.purge(db, clock=clock) == 1
    assert throttle.hit(db, "b" * 64, 3600, clock=clock) == 2 and throttle.hit(db, "a" * 64, 3600, clock=clock) == 1
