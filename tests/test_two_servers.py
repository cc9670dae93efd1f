"""Two app servers on one PostgreSQL database serve one study.

Two ``advbias serve --workers 2`` (gunicorn) processes, each with its own instance
folder (two machines), share one PostgreSQL database and a secret key given in the
environment (``ADVBIAS_SECRET_KEY``). Participants send each request to the other
server than the one before: every acknowledged answer is stored once, none is lost,
every participant finishes with the code. An admin cookie issued by one server works
on the other, and a logout on one ends it on both; login back-off is shared too.
"""
from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Iterator

import pytest
import requests

from advbias.client import HttpClient, Participant
from conftest import scratch_postgres_database
from servers import ServerProcess, compare, stored_answers

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.twoservers]
PARTICIPANTS = 6


@pytest.fixture(scope="module")
def two_servers(postgres_server: str, stimulus_set: Path, tmp_path_factory) -> Iterator[tuple[list[ServerProcess], str]]:  # type: ignore[no-untyped-def]
    from experiment.db import Database, upgrade

    with scratch_postgres_database(postgres_server) as url:
        db = Database(url)
        upgrade(db.engine)
        db.dispose()
        env = {"ADVBIAS_SECRET_KEY": secrets.token_hex(32)}
        servers = [
            ServerProcess(tmp_path_factory.mktemp(f"machine-{name}"), url, workers=2, threads=2, env=env)
            for name in ("a", "b")
        ]
        try:
            for server in servers:
                server.start()
            yield servers, url
        finally:
            for server in servers:
                server.stop()


def _create(url: str, servers: list[ServerProcess], stimulus_set: Path) -> str:
    from experiment.db import Database
    from experiment.study import create_experiment

    slug = f"two-{secrets.token_hex(4)}"
    db = Database(url)
    try:
        for server in servers:  # as `advbias experiment create` run on each machine
            # The simulated participants alternate sides, catch trials included: no screening by catch failures here.
            create_experiment(db, slug, stimulus_set, {"completion_code": "BOTH-DONE", "max_catch_failures": 2},
                              server.instance / "stimuli")
    finally:
        db.dispose()
    for server in servers:  # each machine has the images in its own instance folder
        assert len(list((server.instance / "stimuli").glob("*.png"))) > 0
    return slug


def test_alternating_servers_lose_and_duplicate_nothing(two_servers, stimulus_set: Path) -> None:  # type: ignore[no-untyped-def]
    servers, url = two_servers
    slug = _create(url, servers, stimulus_set)
    clients = [HttpClient(s.url, retry_for=10) for s in servers]
    people = [Participant(slug, f"two-{i}", session_id=f"S{i}") for i in range(PARTICIPANTS)]
    served = [0, 0]
    step = 0
    try:
        while not all(p.done for p in people):
            for person in people:
                if person.done:
                    continue
                method, path, body, _ = person.next_request()
                which = step % 2  # every request goes to the other server than the one before
                person.handle(clients[which].request(method, path, body))
                served[which] += 1
                step += 1
    finally:
        for c in clients:
            c.close()
    assert served[0] > 50 and served[1] > 50
    acks = [a for p in people for a in p.acks]
    result = compare(acks, stored_answers(url, slug))
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["unacknowledged_stored"] == 0, result
    assert result["stored"] == result["acknowledged"] == sum(p.trials.__len__() for p in people)
    assert all(p.status == "completed" and p.completion_code == "BOTH-DONE" for p in people)
    # a participant resuming on the other server gets the same record
    again = clients[1].request("POST", f"/api/v1/experiments/{slug}/participants",
                               {"prolific_pid": "two-0", "study_id": "advbias-client", "session_id": "S0"})
    assert again.status == 200 and again.data["token"] == people[0].token


def _login(session: requests.Session, base: str, password: str) -> requests.Response:
    form = session.get(f"{base}/admin/login", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    return session.post(f"{base}/admin/login", data={"username": "admin", "password": password, "csrf_token": token},
                        allow_redirects=False, timeout=30)


def test_admin_sessions_and_back_off_span_both_servers(two_servers) -> None:  # type: ignore[no-untyped-def]
    from experiment.accounts import ACCOUNT_FAILURES, set_password
    from experiment.db import Database

    servers, url = two_servers
    a, b = servers[0].url, servers[1].url
    db = Database(url)
    try:
        set_password(db, "two servers one password")
    finally:
        db.dispose()
    admin = requests.Session()
    assert _login(admin, a, "two servers one password").status_code == 302
    on_b = requests.Session()
    on_b.cookies.update(admin.cookies)  # the same cookie, sent to the other machine
    assert on_b.get(f"{b}/admin/", allow_redirects=False, timeout=10).status_code == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', admin.get(f"{a}/admin/", timeout=10).text).group(1)  # type: ignore[union-attr]
    assert admin.post(f"{a}/admin/logout", data={"csrf_token": token}, allow_redirects=False, timeout=10).status_code == 302
    assert on_b.get(f"{b}/admin/", allow_redirects=False, timeout=10).status_code == 302  # revoked on B too
    guesser = requests.Session()
    for i in range(ACCOUNT_FAILURES + 1):  # failures spread over both servers add up
        assert _login(guesser, (a, b)[i % 2], "wrong guess").status_code == 401
    assert _login(requests.Session(), b, "two servers one password").status_code == 429
