"""Slow clients and the deploy recipe, for real: ``advbias serve`` directly and behind the shipped nginx and Caddy.

* 8 connections sending headers one line every 3 s and 2 start calls sending a 200-byte body one
  byte every 2 s are held for a few seconds (30 s in ``tests/bench_slow_clients.py``) while other
  participants answer, health is checked and newcomers start: at least 95% of answers and health
  checks and 90% of starts are answered within 2 s, directly and through each proxy.
* A study is taken part in through each shipped config with TLS (a self-signed certificate made
  here); images keep one length, over-limit bodies (chunked or declared) get 413 and store nothing,
  and the proxy's access log holds neither participants' tokens nor Prolific ids.
* The server's own read deadlines close a slow client with 408.

Loopback only, on free ports; every probe stops by itself.
"""
from __future__ import annotations

import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from proxies import PROXIES, binary, running_proxy
from servers import ServerProcess
from slow_clients import Target, call, probe

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]
HOLD_S = 8.0


@pytest.fixture(scope="module")
def served(database_url: str, stimulus_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``advbias serve --workers 2 --threads 4`` believing one proxy, with one experiment."""
    from experiment.db import Database
    from experiment.study import create_experiment

    instance = tmp_path_factory.mktemp("slow-instance")
    slug = f"slow-{uuid.uuid4().hex[:8]}"
    db = Database(database_url)
    create_experiment(db, slug, stimulus_set, {"completion_code": "SLOW-DONE"}, instance / "stimuli")
    db.dispose()
    with ServerProcess(instance, database_url, workers=2, threads=4, env={"ADVBIAS_TRUSTED_PROXIES": "1"}) as server:
        yield {"server": server, "slug": slug, "database_url": database_url}


@pytest.fixture(params=["direct", *PROXIES])
def target(request: pytest.FixtureRequest, served: dict[str, Any], tmp_path: Path) -> Iterator[Target]:
    if request.param == "direct":
        yield Target(served["server"].port)
        return
    if binary(request.param) is None:
        pytest.skip(f"{request.param} is not installed (make test provisions it)")
    with running_proxy(request.param, served["server"].port, tmp_path / request.param) as port:
        yield Target(port, tls=True)


def test_slow_clients_do_not_hold_the_study(target: Target, served: dict[str, Any]) -> None:
    tally = probe(target, served["slug"], hold_s=HOLD_S)
    assert tally.made["slow connections opened"] >= 10, tally.summary()
    assert tally.made.get("answer", 0) >= 10 and tally.made.get("start", 0) >= 5, tally.summary()
    assert tally.share("answer") >= 0.95, tally.summary()
    assert tally.share("health") >= 0.95, tally.summary()
    assert tally.share("start") >= 0.90, tally.summary()


def _stored_pids(database_url: str) -> set[str]:
    from sqlalchemy import select

    from experiment.db import Database
    from experiment.models import Participant

    db = Database(database_url)
    try:
        with db.session() as s:
            return set(s.scalars(select(Participant.prolific_pid)))
    finally:
        db.dispose()


def _raw(target: Target, data: bytes) -> bytes:
    with target.connect(timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, OSError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in b"".join(chunks)[:2000]:
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                if m and len(body) >= int(m.group(1)):
                    break
    return b"".join(chunks)


@pytest.mark.parametrize("kind", PROXIES)
def test_a_study_through_each_shipped_proxy(kind: str, served: dict[str, Any], tmp_path: Path) -> None:
    if binary(kind) is None:
        pytest.skip(f"{kind} is not installed (make test provisions it)")
    slug = served["slug"]
    with running_proxy(kind, served["server"].port, tmp_path / kind) as port:
        target = Target(port, tls=True)
        pid = "PROXY" + uuid.uuid4().hex[:8]
        status, state = call(target, "POST", f"/api/v1/experiments/{slug}/participants",
                             {"prolific_pid": pid, "study_id": "STUDY1", "session_id": "SESSION1"}, timeout=30)
        assert status == 201, (status, state)
        token = state["token"]
        base = f"/api/v1/participants/{token}"
        assert call(target, "POST", f"{base}/consent", {"consent": True}, timeout=30)[0] == 200
        assert call(target, "GET", f"/run/{slug}?PROLIFIC_PID={pid}&STUDY_ID=STUDY1&SESSION_ID=SESSION1",
                    timeout=30)[0] == 200
        status, page = call(target, "POST", f"{base}/browser-check", {"window_width": 1280, "window_height": 800},
                            timeout=30)
        assert status == 200
        status, page = call(target, "GET", f"{base}/trials?start=0&count=500", timeout=30)
        lengths = set()
        for trial in page["trials"]:
            conn = target.http(30)
            conn.request("GET", trial["left"], headers={"Accept-Encoding": "gzip, zstd", "Host": target.host_header})
            reply = conn.getresponse()
            body = reply.read()
            conn.close()
            assert reply.status == 200 and reply.getheader("Content-Encoding") is None
            lengths.add(len(body))
            status, answer = call(target, "POST", f"{base}/responses", {
                "trial_id": trial["id"], "idempotency_key": uuid.uuid4().hex, "response": "right", "rt_ms": 500.0},
                timeout=30)
            assert status == 200, (status, answer)
        assert len(lengths) == 1
        status, done = call(target, "POST", f"{base}/finish", {"text": "through " + kind}, timeout=30)
        assert status == 200 and done["completion_code"] == "SLOW-DONE", done
        # HTTPS as the proxy told advbias (X-Forwarded-Proto): HSTS on every answer
        conn = target.http(30)
        conn.request("GET", "/api/v1/health", headers={"Host": target.host_header})
        reply = conn.getresponse()
        reply.read()
        conn.close()
        assert reply.getheader("Strict-Transport-Security")
        # over-limit bodies, declared or chunked, are refused and store nothing
        before = _stored_pids(served["database_url"])
        start = f"/api/v1/experiments/{slug}/participants"
        pieces = [b'{"prolific_pid": "PROXY-OVER"}'] + [b" " * 4096] * 25
        chunked = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
        head = f"POST {start} HTTP/1.1\r\nHost: {target.host_header}\r\nContent-Type: application/json\r\n"
        reply = _raw(target, f"{head}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode() + chunked)
        assert reply.split(b"\r\n", 1)[0].split()[1] == b"413", reply[:300]
        reply = _raw(target, f"{head}Content-Length: 70000\r\nConnection: close\r\n\r\n".encode() + b"x" * 70000)
        assert reply.split(b"\r\n", 1)[0].split()[1] == b"413", reply[:300]
        assert _stored_pids(served["database_url"]) == before
    log = (tmp_path / kind / "access.log").read_text()
    assert "/api/v1/participants/" in log and f"/experiments/{slug}/participants" in log  # the log works ...
    assert token not in log and pid not in log and "PROLIFIC_PID" not in log  # ... and keeps ids out


def test_the_server_closes_slow_clients(served: dict[str, Any]) -> None:
    """A head that never ends gets 408 after the header deadline; the connection is closed."""
    from experiment.gunicorn_worker import HEADER_TIMEOUT_S

    with socket.create_connection(("127.0.0.1", served["server"].port), timeout=HEADER_TIMEOUT_S + 5) as sock:
        began = time.monotonic()
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n")
        reply = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        took = time.monotonic() - began
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert HEADER_TIMEOUT_S - 1 <= took <= HEADER_TIMEOUT_S + 3, took
