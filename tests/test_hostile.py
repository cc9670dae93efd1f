"""Hostile input on every participant and admin endpoint: never a 5xx, never a stored change.

Property-based (hypothesis) on SQLite and PostgreSQL: random and near-valid JSON bodies,
wrong types, huge and malformed bodies, unknown, malformed and *foreign* ids (another
participant's token or trial), replays and reused idempotency keys, path tricks in stimulus
and static URLs, and forged admin forms. For every request:

* the status is below 500, and API errors are JSON objects with an ``error`` message;
* a refused request (4xx) leaves every table exactly as it was (compared row by row);
* the database's invariants hold afterwards: each participant's answers are exactly its
  trials before ``next_index``, no answer belongs to another participant's trial, and only a
  participant who answered every trial is finished.

The raw-path and oversized-stream cases also run against the real gunicorn server, where no
test client normalises the request first.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import re
import string
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from sqlalchemy import text

TABLES = ("experiments", "stimuli", "participants", "trials", "responses", "admins")
HOSTILE = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ADMIN_PASSWORD = "correct horse battery"


# --------------------------------------------------------------------------- what the database holds

def snapshot(db: Any) -> str:
    """A digest of every row of every table (any stored change alters it)."""
    digest = hashlib.sha256()
    with db.engine.connect() as conn:
        for table in TABLES:
            for row in conn.execute(text(f"SELECT * FROM {table} ORDER BY id")):
                digest.update(repr(tuple(row)).encode())
            digest.update(b"|")
    return digest.hexdigest()


def check_invariants(db: Any) -> None:
    with db.engine.connect() as conn:
        foreign = conn.execute(text(
            "SELECT count(*) FROM responses r JOIN trials t ON t.id = r.trial_id WHERE t.participant_id <> r.participant_id"
        )).scalar()
        assert foreign == 0, "an answer is stored against another participant's trial"
        rows = conn.execute(text(
            "SELECT p.id, p.next_index, p.n_trials, p.status, "
            "(SELECT count(*) FROM responses r WHERE r.participant_id = p.id), "
            "(SELECT max(t.\"index\") FROM responses r JOIN trials t ON t.id = r.trial_id WHERE r.participant_id = p.id) "
            "FROM participants p"
        )).all()
    for pid, next_index, n_trials, status, answers, last in rows:
        assert answers == next_index, (pid, answers, next_index)
        assert (last is None and next_index == 0) or last == next_index - 1, (pid, last, next_index)
        assert status == "in_progress" or next_index == n_trials, (pid, status, next_index)


def assert_refusal_is_clean(reply: Any, before: str, db: Any, api: bool) -> None:
    assert reply.status_code < 500, (reply.status_code, reply.get_data()[:300])
    if api and reply.status_code >= 400:
        body = reply.get_json(silent=True)
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], reply.get_data()[:300]
    if reply.status_code >= 400:
        assert snapshot(db) == before, f"a refused request ({reply.status_code}) changed the database"
    check_invariants(db)


# --------------------------------------------------------------------------- the scene

class Scene:
    """An experiment with two participants: 'own' (half-way through) and 'foreign' (another one)."""

    def __init__(self, participant: Any, slug: str) -> None:
        self.own = participant(slug, prolific_pid="OWN").prepare()
        own_trials = self.own.trials()
        for trial in own_trials[:3]:
            assert self.own.answer(trial, key=f"own-key-{trial['index']:04d}").status_code == 200
        self.foreign = participant(slug, prolific_pid="FOREIGN").prepare()
        self.fresh = participant(slug)  # started, no consent yet
        self.slug = slug
        self.own_trials = own_trials
        self.foreign_trials = self.foreign.trials()


@pytest.fixture
def scene(experiment: str, participant: Any) -> Scene:
    return Scene(participant, experiment)


# --------------------------------------------------------------------------- strategies

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["", "left", "right", "key", "click", "\x00", "\ud800", "../../etc/passwd", "%00", "' OR 1=1 --"]),
)
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                          max_leaves=12)
FIELD_NAMES = ["trial_id", "idempotency_key", "response", "response_source", "rt_ms", "onset_frame_ms",
               "offset_frame_ms", "fullscreen", "blurred", "blur_events", "consent", "text", "prolific_pid",
               "study_id", "session_id", "window_width", "window_height", "refresh_hz", "user_agent", "surprise"]


def near_valid(scene_values: dict[str, list[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies built from real field names with plausible, wrong or extreme values."""
    def value_for(name: str) -> st.SearchStrategy[Any]:
        return st.one_of(st.sampled_from(scene_values.get(name, [None])), json_leaf)

    return st.lists(st.sampled_from(FIELD_NAMES), max_size=8, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({n: value_for(n) for n in names})
    )


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([
        b"{", b"[" * 20_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000, b"\xff\xfe", b"null", b"[]", b'""', b"1e999",
        b'{"rt_ms": 1e999}', b'{"rt_ms": 1' + b"0" * 5000 + b"}", b'{"response": "left", "response": "up"}',
        b'{"trial_id": {"$ne": null}}', b"x" * (65 * 1024), b'{"text": "' + b"a" * 70_000 + b'"}',
    ]),
)


def token_choices(scene: Scene) -> st.SearchStrategy[str]:
    """Mostly real tokens (so that bodies reach the deeper checks), else unknown or malformed ones."""
    return st.one_of(
        st.sampled_from([scene.own.token] * 4 + [scene.foreign.token, scene.fresh.token]),
        st.sampled_from(["unknown-token", "x" * 129, "..", "%2e%2e", "a%2Fb", "null", "0"]),
        st.text(alphabet=string.ascii_letters + string.digits + "-_%.~", min_size=1, max_size=30),
    ).flatmap(lambda t: st.just(t))


ENDPOINTS = [("POST", "/api/v1/experiments/{slug}/participants"), ("GET", "/api/v1/participants/{token}"),
             ("POST", "/api/v1/participants/{token}/consent"), ("POST", "/api/v1/participants/{token}/browser-check"),
             ("GET", "/api/v1/participants/{token}/trials"), ("POST", "/api/v1/participants/{token}/finish")]
ENDPOINTS += [("POST", "/api/v1/participants/{token}/responses")] * 4  # the one that stores answers, most often
ENDPOINTS += [("GET", "/api/v1/health"), ("GET", "/api/v1/openapi.json"), ("PUT", "/api/v1/participants/{token}/responses"),
              ("DELETE", "/api/v1/participants/{token}")]


# --------------------------------------------------------------------------- participant API

def valid_body(endpoint: str, scene: Scene, draw: Any) -> dict[str, Any]:
    """A body the endpoint would accept from some participant; mutations then make it hostile."""
    if endpoint.endswith("/participants"):
        return {"prolific_pid": draw(st.sampled_from(["OWN", "FOREIGN", "NEW-ONE"])), "study_id": "S", "session_id": "X"}
    if endpoint.endswith("/consent"):
        return {"consent": True}
    if endpoint.endswith("/browser-check"):
        return {"window_width": 1280, "window_height": 800, "refresh_hz": 60.0, "user_agent": "x", "fullscreen": False}
    if endpoint.endswith("/finish"):
        return {"text": "nothing"}
    trial = draw(st.sampled_from(scene.own_trials + scene.foreign_trials[:2]))
    key = draw(st.one_of(st.sampled_from(["own-key-0001", "own-key-0002"]), st.uuids().map(lambda u: u.hex)))
    return {"trial_id": trial["id"], "idempotency_key": key, "response": draw(st.sampled_from(["left", "right"])),
            "rt_ms": 512.0, "response_source": "click", "onset_frame_ms": 1000.0, "fullscreen": True}


mutations = st.lists(st.tuples(st.sampled_from(["drop", "set"]), st.sampled_from(FIELD_NAMES), json_leaf), max_size=3)


def test_participant_api_survives_hostile_requests(client: Any, db: Any, scene: Scene) -> None:
    """Random, near-valid and mutated-valid requests to every participant endpoint."""
    values = {
        "trial_id": [t["id"] for t in scene.own_trials[2:5]] + [scene.foreign_trials[0]["id"], "0", "x" * 33],
        "idempotency_key": ["own-key-0002", "own-key-0001", "abcdefgh", "a" * 64, "a" * 65, "short"],
        "response": ["left", "right", "LEFT", "middle"], "rt_ms": [0, 500.5, -1, 3_600_001, "500"],
        "consent": [True, False, "true"], "prolific_pid": ["OWN", "FOREIGN", "NEW-ONE", "has space"],
        "window_width": [1280, -1, 10**9], "window_height": [800, 0], "text": ["fine", "x" * 5001],
    }

    @settings(HOSTILE, max_examples=250)
    @given(endpoint=st.sampled_from(ENDPOINTS), token=token_choices(scene),
           slug=st.sampled_from([scene.slug, scene.slug, "nope", "..", "UPPER", "a" * 70]),
           shape=st.sampled_from(["mutated", "mutated", "near-valid", "any-json", "raw"]), data=st.data(),
           query=st.one_of(st.just(""), st.sampled_from(["?start=-1", "?count=0", "?count=501", "?start=abc",
                                                         "?start=0&count=500", "?start=99999999999999999999"])))
    def hostile(endpoint: tuple[str, str], token: str, slug: str, shape: str, data: Any, query: str) -> None:
        method, template = endpoint
        path = template.format(slug=slug, token=token) + query
        if shape == "raw":
            raw = data.draw(raw_bodies)
        else:
            if shape == "mutated":
                body: Any = valid_body(template, scene, data.draw)
                for op, name, value in data.draw(mutations):
                    if op == "drop":
                        body.pop(name, None)
                    else:
                        body[name] = value
            elif shape == "near-valid":
                body = data.draw(near_valid(values))
            else:
                body = data.draw(json_value)
            raw = json.dumps(body, allow_nan=True).encode()
        before = snapshot(db)
        reply = client.open(path, method=method, data=raw, content_type="application/json")
        assert_refusal_is_clean(reply, before, db, api=True)

    hostile()


def test_answer_endpoint_under_mutated_answers(client: Any, db: Any, scene: Scene) -> None:
    """Valid answers with a few fields dropped or replaced, sent with real tokens: the deep checks."""
    tokens = {scene.own.token: "own", scene.foreign.token: "foreign", scene.fresh.token: "fresh"}

    @settings(HOSTILE, max_examples=150)
    @given(token=st.sampled_from([scene.own.token] * 3 + [scene.foreign.token, scene.fresh.token]), data=st.data(),
           changes=st.one_of(st.just([]), mutations))
    def hostile(token: str, data: Any, changes: list[tuple[str, str, Any]]) -> None:
        body = valid_body("/responses", scene, data.draw)
        for op, name, value in changes:
            if op == "drop":
                body.pop(name, None)
            else:
                body[name] = value
        before_next = client.get(f"/api/v1/participants/{token}").get_json()["next_index"]
        before = snapshot(db)
        reply = client.post(f"/api/v1/participants/{token}/responses", data=json.dumps(body, allow_nan=True),
                            content_type="application/json")
        assert_refusal_is_clean(reply, before, db, api=True)
        if reply.status_code == 200 and reply.headers.get("Idempotent-Replayed") != "true":
            # Only the next trial of one's own sequence can be stored, and only once.
            own = scene.own_trials if tokens[token] == "own" else scene.foreign_trials
            trial = next(t for t in own if t["id"] == body["trial_id"])
            assert trial["index"] == before_next and reply.get_json()["next_index"] == before_next + 1

    hostile()


def test_replays_and_foreign_ids_store_nothing(client: Any, db: Any, scene: Scene) -> None:
    """A stateful model of one participant: every reply must match what the model predicts."""

    class Answering(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            # Each run starts a new participant of the same experiment.
            start = {"prolific_pid": uuid.uuid4().hex, "session_id": "S"}
            self.token = client.post(f"/api/v1/experiments/{scene.slug}/participants", json=start).get_json()["token"]
            assert client.post(f"/api/v1/participants/{self.token}/consent", json={"consent": True}).status_code == 200
            check = {"window_width": 1280, "window_height": 800, "refresh_hz": 60.0}
            assert client.post(f"/api/v1/participants/{self.token}/browser-check", json=check).status_code == 200
            self.trials = client.get(f"/api/v1/participants/{self.token}/trials?start=0&count=500").get_json()["trials"]
            self.next = 0
            self.sent: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (key, body, reply)

        def post(self, body: dict[str, Any]) -> Any:
            return client.post(f"/api/v1/participants/{self.token}/responses", json=body)

        def body(self, trial: dict[str, Any], key: str, side: str = "left") -> dict[str, Any]:
            return {"trial_id": trial["id"], "idempotency_key": key, "response": side, "rt_ms": 321.0}

        @precondition(lambda self: self.next < len(self.trials))
        @rule(side=st.sampled_from(["left", "right"]))
        def answer_next(self, side: str) -> None:
            key = uuid.uuid4().hex
            body = self.body(self.trials[self.next], key, side)
            reply = self.post(body)
            assert reply.status_code == 200 and "Idempotent-Replayed" not in reply.headers
            self.sent.append((key, body, reply.get_json()))
            self.next += 1

        @precondition(lambda self: self.sent)
        @rule(pick=st.integers(min_value=0), change_side=st.booleans())
        def replay(self, pick: int, change_side: bool) -> None:
            key, body, first = self.sent[pick % len(self.sent)]
            before = snapshot(db)
            again = dict(body, response="right" if body["response"] == "left" else "left") if change_side else body
            reply = self.post(again)  # a replay returns the first answer and stores nothing, even if altered
            assert reply.status_code == 200 and reply.headers.get("Idempotent-Replayed") == "true"
            assert reply.get_json() == first
            assert snapshot(db) == before

        @precondition(lambda self: self.sent and self.next < len(self.trials))
        @rule(pick=st.integers(min_value=0))
        def reuse_key_for_another_trial(self, pick: int) -> None:
            key, _body, _first = self.sent[pick % len(self.sent)]
            before = snapshot(db)
            reply = self.post(self.body(self.trials[self.next], key))
            assert reply.status_code == 409 and "another trial" in reply.get_json()["error"]
            assert snapshot(db) == before

        @rule(pick=st.integers(min_value=0))
        def answer_out_of_order(self, pick: int) -> None:
            others = [t for t in self.trials if t["index"] != self.next]
            trial = others[pick % len(others)]
            before = snapshot(db)
            reply = self.post(self.body(trial, uuid.uuid4().hex))
            assert reply.status_code == 409 and snapshot(db) == before

        @rule(pick=st.integers(min_value=0), own_token=st.booleans())
        def foreign_trial(self, pick: int, own_token: bool) -> None:
            """Another participant's trial, with our token, or our trial with theirs: unknown either way."""
            before = snapshot(db)
            if own_token:
                trial = scene.own_trials[pick % len(scene.own_trials)]
                reply = self.post(self.body(trial, uuid.uuid4().hex))
            else:
                trial = self.trials[min(self.next, len(self.trials) - 1)]
                reply = client.post(f"/api/v1/participants/{scene.own.token}/responses",
                                    json=self.body(trial, uuid.uuid4().hex))
            assert reply.status_code == 404 and snapshot(db) == before

        @rule()
        def finish(self) -> None:
            before = snapshot(db)
            reply = client.post(f"/api/v1/participants/{self.token}/finish", json={"text": "done"})
            if self.next < len(self.trials):
                assert reply.status_code == 409 and snapshot(db) == before
            else:
                assert reply.status_code == 200 and reply.get_json()["completion_code"]
                self.next = len(self.trials)

        @invariant()
        def server_agrees(self) -> None:
            state = client.get(f"/api/v1/participants/{self.token}").get_json()
            assert state["next_index"] == self.next
            check_invariants(db)

    run_state_machine_as_test(Answering, settings=settings(
        max_examples=12, stateful_step_count=25, deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]))


# --------------------------------------------------------------------------- pages, images, static files

def test_paths_never_escape_the_image_store(client: Any, db: Any, app: Any, scene: Scene) -> None:
    secret = app.config["SECRET_KEY"]
    own_image = scene.own_trials[0]["left"]  # a real one: /stimuli/<slug>/<alias>.png

    @HOSTILE
    @given(path=st.one_of(
        st.sampled_from([
            "/stimuli/../secret_key", "/stimuli/..%2Fsecret_key", "/stimuli/%2e%2e%2fsecret_key",
            "/stimuli/..%5csecret_key", f"{own_image}/..", f"{own_image}%00.png", f"{own_image}?x=../../secret_key",
            own_image.upper(), own_image.replace(".png", ".PNG"), "/stimuli/" + "0" * 64 + ".png",
            own_image.rsplit("/", 1)[0] + "/" + "0" * 32 + ".png", "/stimuli/" + own_image.rsplit("/", 1)[1],
            "/static/../experiment/__init__.py", "/static/..%2F..%2Finstance%2Fsecret_key", "/static/%2e%2e/README.md",
            "/run/..%2Fadmin", "/run/" + "a" * 500, "/run/%00", "//etc/passwd", "/admin/../api/v1/health",
        ]),
        st.text(alphabet=string.ascii_letters + string.digits + "./%-_~\\", max_size=60).map(lambda s: "/stimuli/" + s),
        st.text(alphabet=string.ascii_letters + string.digits + "./%-_~", max_size=60).map(lambda s: "/static/" + s),
    ))
    def hostile(path: str) -> None:
        before = snapshot(db)
        reply = client.get(path)
        assert reply.status_code < 500, (path, reply.status_code)
        data = reply.get_data()
        assert secret.encode() not in data
        assert b"def create_app" not in data and b"[project]" not in data
        if reply.status_code == 200 and path.startswith("/stimuli/"):
            assert data.startswith(b"\x89PNG") and path.split("?")[0] == own_image, path
        assert snapshot(db) == before

    hostile()


# --------------------------------------------------------------------------- admin

def _login(client: Any, db: Any) -> str:
    from experiment.accounts import set_password

    set_password(db, ADMIN_PASSWORD)
    page = client.get("/admin/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    reply = client.post("/admin/login", data={"csrf_token": csrf, "username": "admin", "password": ADMIN_PASSWORD})
    assert reply.status_code == 302
    home = client.get("/admin/").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', home).group(1)


@pytest.mark.parametrize("logged_in", [True, False], ids=["admin", "anonymous"])
def test_admin_survives_hostile_requests(client: Any, db: Any, scene: Scene, logged_in: bool) -> None:
    csrf = _login(client, db) if logged_in else "no-session"
    if not logged_in:
        from experiment.accounts import set_password

        set_password(db, ADMIN_PASSWORD)

    @HOSTILE
    @given(
        route=st.sampled_from(["/admin/", "/admin/login", "/admin/experiments/{slug}", "/admin/experiments/{slug}/active",
                               "/admin/experiments/{slug}/active", "/admin/experiments/{slug}/export.{fmt}"]),
        method=st.sampled_from(["GET", "POST"]),
        slug=st.one_of(st.sampled_from([scene.slug, "nope", "..", "%2e%2e", "a" * 100]), st.text(max_size=20)),
        fmt=st.sampled_from(["csv", "parquet", "xlsx", "csv/../x", "", "%00"]),
        token=st.sampled_from(["right", "wrong", "", None]),
        fields=st.dictionaries(st.sampled_from(["active", "active", "username", "password", "next", "csrf"]),
                               st.one_of(st.sampled_from(["0", "1", "2", "", "\x00", "admin"]), st.text(max_size=30)),
                               max_size=3),
    )
    def hostile(route: str, method: str, slug: str, fmt: str, token: str | None, fields: dict[str, str]) -> None:
        path = route.format(slug=slug.replace("/", "%2F").replace("?", "%3F").replace("#", "%23"), fmt=fmt)
        form = dict(fields)
        if token is not None:
            form["csrf_token"] = csrf if token == "right" else token
        before = snapshot(db)
        reply = client.open(path, method=method, data=form if method == "POST" else None)
        assert reply.status_code < 500, (method, path, form, reply.status_code)
        if reply.status_code >= 400 or not logged_in or token != "right" or method == "GET":
            assert snapshot(db) == before, (method, path, form, reply.status_code)
        if not logged_in and reply.status_code == 200:
            assert route == "/admin/login" and b"csrf_token" in reply.get_data()  # nothing else without a login
        check_invariants(db)

    hostile()


# --------------------------------------------------------------------------- the real server

def _raw(live: Any, request_line: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Send a request exactly as written (no client-side normalisation of the path)."""
    conn = http.client.HTTPConnection("127.0.0.1", live.server.port, timeout=30)
    method, path = request_line.split(" ", 1)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for key, value in (headers or {}).items():
        conn.putheader(key, value)
    conn.endheaders()
    if body:
        conn.send(body)
    reply = conn.getresponse()
    data = reply.read()
    conn.close()
    return reply.status, data


def test_real_server_refuses_path_tricks_and_oversized_streams(live_study: Any) -> None:
    slug = live_study.create_experiment(trials_per_participant=4, practice_trials=0, catch_trials=0)
    secret = (live_study.server.instance / "secret_key").read_text().strip()
    for path in ["/stimuli/../secret_key", "/stimuli/..%2fsecret_key", "/stimuli/%2e%2e%2fsecret_key",
                 "/stimuli/..%2f..%2fserver.log", "/static/../experiment/__init__.py", "/static/..%2f..%2fpyproject.toml",
                 "/static/%2e%2e/%2e%2e/instance/secret_key", "/../../etc/passwd", f"/run/{slug}/../../secret_key"]:
        status, data = _raw(live_study, f"GET {path}")
        assert status < 500, (path, status)
        assert status != 200 or b"<html" in data[:300].lower(), (path, status)  # a page at most, never a file
        assert secret.encode() not in data and b"def create_app" not in data and b"[project]" not in data, path
    before = snapshot(live_study.db)
    url = f"/api/v1/experiments/{slug}/participants"
    # A chunked body without Content-Length must still meet the 64 KiB limit.
    chunk = b'{"prolific_pid": "' + b"A" * 100_000 + b'"}'
    chunked = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n"
    status, data = _raw(live_study, f"POST {url}", chunked,
                        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert status == 413 and "too large" in json.loads(data)["error"], (status, data[:200])
    # Valid JSON first, then 100 KiB of spaces and garbage in many chunks: refused whole, never cut and parsed.
    pieces = [b'{"prolific_pid": "CHUNKED-OVER"}'] + [b" " * 4096] * 25 + [b"garbage"]
    chunked = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
    status, data = _raw(live_study, f"POST {url}", chunked,
                        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert status == 413 and "too large" in json.loads(data)["error"], (status, data[:200])
    # A chunked body within the limit is read whole and served as usual.
    small = [b'{"prolific_pid": ', b'"CHUNKED-OK"}']
    chunked = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in small) + b"0\r\n\r\n"
    status, data = _raw(live_study, f"POST {url}", chunked,
                        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert status == 201 and json.loads(data)["token"], (status, data[:200])
    before = snapshot(live_study.db)
    status, data = _raw(live_study, f"POST {url}", b"x" * 70_000,
                        {"Content-Type": "application/json", "Content-Length": "70000"})
    assert status == 413 and "too large" in json.loads(data)["error"]
    surrogate = b'{"prolific_pid": "\\ud800"}'
    status, data = _raw(live_study, f"POST {url}", surrogate,
                        {"Content-Type": "application/json", "Content-Length": str(len(surrogate))})
    assert status == 400
    assert snapshot(live_study.db) == before
