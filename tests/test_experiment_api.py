"""Bad input to the JSON API: always a JSON error with a 4xx status, never a stored change."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from experiment.db import head_revision
from experiment.models import Participant, Response

GOOD = {"idempotency_key": "abcdefgh-1234", "response": "left", "rt_ms": 500.0}


def stored(db) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Participant)), s.scalar(select(func.count()).select_from(Response))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"response": "middle"}, "field response must be one of 'left', 'right'"),
        ({"response": 1}, "field response must be one of"),
        ({"rt_ms": -1}, "rt_ms must be a number between 0"),
        ({"rt_ms": "fast"}, "rt_ms must be a number"),
        ({"rt_ms": True}, "rt_ms must be a number"),
        ({"rt_ms": 1e300}, "rt_ms must be a number between"),
        ({"idempotency_key": "short"}, "idempotency_key must be a string of 8 to 64 characters"),
        ({"idempotency_key": "has spaces in it"}, "idempotency_key must be 8-64 letters"),
        ({"fullscreen": "yes"}, "fullscreen must be true or false"),
        ({"blur_events": 1.5}, "blur_events must be an integer"),
        ({"response_source": "mind"}, "response_source must be one of 'key', 'click'"),
        ({"surprise": 1}, "unknown field(s): surprise"),
        ({"rt_ms": None}, "field rt_ms is required"),
    ],
)
def test_bad_response_bodies(client, db, experiment, participant, change, message) -> None:  # type: ignore[no-untyped-def]
    p = participant(experiment).prepare()
    trial = p.trials()[0]
    body = {"trial_id": trial["id"], **GOOD, **change}
    reply = client.post(f"{p.base}/responses", json=body)
    assert reply.status_code == 400
    assert message in reply.get_json()["error"]
    assert stored(db) == (1, 0) and p.get_state()["next_index"] == 0


@pytest.mark.parametrize(
    "data, content_type, status, message",
    [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b"[1, 2]", "application/json", 400, "must be a JSON object"),
        (b"", "application/json", 400, "must be a JSON object"),
        (b'{"trial_id": "abc", "idempotency_key": "abcdefgh", "response": "left", "rt_ms": NaN}',
         "application/json", 400, "rt_ms must be a number"),
        (b'{"trial_id": "abc", "idempotency_key": "abcdefgh", "response": "left", "rt_ms": Infinity}',
         "application/json", 400, "rt_ms must be a number"),
        (b"\xff\xfe\x00", "application/json", 400, "not valid JSON"),
        (b"x" * (70 * 1024), "application/json", 413, "too large"),
        (b"response=left", "application/x-www-form-urlencoded", 400, "not valid JSON"),
        (b"[" * 50_000, "application/json", 400, "not valid JSON"),
        (b'{"a":' * 9_000 + b"1" + b"}" * 9_000, "application/json", 400, "not valid JSON"),
        (b"null", "application/json", 400, "not valid JSON"),
    ],
)
def test_malformed_bodies(client, db, experiment, participant, data, content_type, status, message) -> None:  # type: ignore[no-untyped-def]
    p = participant(experiment).prepare()
    reply = client.post(f"{p.base}/responses", data=data, content_type=content_type)
    assert reply.status_code == status
    assert reply.is_json and message in reply.get_json()["error"]
    assert stored(db) == (1, 0)


def test_bad_start_and_lookup(client, db, experiment) -> None:  # type: ignore[no-untyped-def]
    base = f"/api/v1/experiments/{experiment}/participants"
    cases = [
        (base, {"prolific_pid": "has space"}, 400, "PROLIFIC_PID must be"),
        (base, {"prolific_pid": 12}, 400, "prolific_pid must be a string"),
        (base, {"prolific_pid": "x" * 200}, 400, "at most 128"),
        (base, {"name": "x"}, 400, "unknown field"),
        ("/api/v1/experiments/nope/participants", {}, 404, "no experiment named 'nope'"),
        ("/api/v1/experiments/..%2Fadmin/participants", {}, 404, "not found"),
    ]
    for url, body, status, message in cases:
        reply = client.post(url, json=body)
        assert reply.status_code == status, (url, body, reply.get_json())
        assert message in reply.get_json()["error"]
    assert stored(db) == (0, 0)
    assert client.get("/api/v1/participants/unknown-token").status_code == 404
    assert client.get("/api/v1/participants/bad%20token").get_json() == {"error": "unknown participant"}


def test_text_that_cannot_be_stored_is_refused(client, db, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    """NUL characters and lone surrogates would make PostgreSQL fail: they are a 400, not a 500."""
    p = participant(experiment).prepare()
    p.answer_all()
    for body in (b'{"text": "a\\u0000b"}', b'{"text": "\\ud800"}'):
        reply = client.post(f"{p.base}/finish", data=body, content_type="application/json")
        assert reply.status_code == 400 and "cannot be stored" in reply.get_json()["error"]
    assert p.get_state()["status"] == "in_progress"
    reply = client.post(f"/api/v1/experiments/{experiment}/participants",
                        data=b'{"prolific_pid": "\\ud800"}', content_type="application/json")
    assert reply.status_code == 400
    check = client.post(f"/api/v1/experiments/{experiment}/participants", json={"prolific_pid": "CHECK"})
    token = check.get_json()["token"]
    client.post(f"/api/v1/participants/{token}/consent")
    bad_agent = client.post(f"/api/v1/participants/{token}/browser-check",
                            json={"window_width": 900, "window_height": 600, "user_agent": "x\x00y"})
    assert bad_agent.status_code == 400
    login = client.post("/admin/login", data={"username": "a\x00b", "password": "x"})
    assert login.status_code == 400  # no CSRF token: refused before anything else
    assert stored(db) == (2, 12)


def test_bad_query_and_routes(client, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    p = participant(experiment).prepare()
    for query, message in (("count=0", "between 1 and 500"), ("count=abc", "must be an integer"),
                           ("start=-1", "between 0"), ("count=100000", "between 1 and 500")):
        reply = client.get(f"{p.base}/trials?{query}")
        assert reply.status_code == 400 and message in reply.get_json()["error"]
    assert client.get(f"{p.base}/trials?start=999").get_json()["trials"] == []
    missing = client.get("/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.get_json() == {"error": "not found"}
    wrong_method = client.delete(f"{p.base}/responses")
    assert wrong_method.status_code == 405 and wrong_method.get_json() == {"error": "method not allowed"}
    consent_refused = client.post(f"{p.base}/consent", json={"consent": False})
    assert consent_refused.status_code == 400
    bad_check = client.post(f"{p.base}/browser-check", json={"window_width": -5, "window_height": 10})
    assert bad_check.status_code == 400 and "window_width" in bad_check.get_json()["error"]
    too_long = client.post(f"{p.base}/finish", json={"text": "x" * 6000})
    assert too_long.status_code == 400


def test_openapi_describes_every_api_route(app, client) -> None:  # type: ignore[no-untyped-def]
    doc = client.get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/") and rule.endpoint != "api.openapi":
            path = rule.rule.replace("<slug>", "{slug}").replace("<token>", "{token}")
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                routes.add((path, method.lower()))
    assert routes == documented
    response_schema = doc["components"]["schemas"]["Response"]
    assert response_schema["additionalProperties"] is False
    assert set(response_schema["required"]) == {"trial_id", "idempotency_key", "response", "rt_ms"}
    health = client.get("/api/v1/health").get_json()
    assert health == {"ok": True, "schema": head_revision()}
