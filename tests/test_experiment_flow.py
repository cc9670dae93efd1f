"""The participant flow through the JSON API, on SQLite and PostgreSQL.

Whole flow, resume, duplicate PROLIFIC_PID, idempotent saving, order and
ownership checks, list assignment under concurrency, screen-out, and what a
participant can (not) see.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from experiment.models import Participant, Response, Stimulus, Trial


def count(db, model, **where) -> int:  # type: ignore[no-untyped-def]
    with db.session() as s:
        query = select(func.count()).select_from(model)
        for key, value in where.items():
            query = query.where(getattr(model, key) == value)
        return s.scalar(query)


def test_whole_flow(client, db, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    page = client.get(f"/run/{experiment}?PROLIFIC_PID=abc&STUDY_ID=s&SESSION_ID=x")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for testid in ("continue", "consent", "left", "right", "completion-code"):
        assert f'data-testid="{testid}"' in html
    assert html.count('data-testid="continue"') == 1  # one continue button, reused on every screen

    p = participant(experiment, prolific_pid="PID-1")
    assert p.created and p.state["status"] == "in_progress" and p.state["n_trials"] == 12
    assert p.state["n_practice"] == 2 and p.state["completion_code"] is None
    # nothing before consent and the browser check
    assert client.get(f"{p.base}/trials").status_code == 403
    assert client.post(f"{p.base}/browser-check", json={"window_width": 1, "window_height": 1}).status_code == 403
    p.prepare()
    assert p.state["consented"] and p.state["browser_checked"]

    trials = p.trials()
    assert [t["index"] for t in trials] == list(range(12))
    assert [t["practice"] for t in trials[:3]] == [True, True, False]
    # finishing early is refused and stores nothing
    early = p.finish()
    assert early.status_code == 409 and "not answered" in early.get_json()["error"]
    for t in trials:
        reply = p.answer(t, "left" if t["index"] % 3 else "right")
        assert reply.status_code == 200
        body = reply.get_json()
        assert body["stored"] and body["index"] == t["index"] and body["next_index"] == t["index"] + 1
        assert body["done"] == (t["index"] == 11)
    assert p.get_state()["next_index"] == 12
    done = p.finish("the left ones were grainy")
    assert done.status_code == 200
    state = done.get_json()
    assert state["status"] in ("completed", "screened_out")
    code = "DONE-1234" if state["status"] == "completed" else "OUT-5678"
    assert state["completion_code"] == code
    assert state["redirect_url"] == f"https://app.prolific.com/submissions/complete?cc={code}"
    assert count(db, Response) == 12
    with db.session() as s:
        record = s.scalar(select(Participant))
        assert record.debrief == "the left ones were grainy" and record.refresh_hz == 60.0
        assert record.browser["window_width"] == 1280 and record.completed_at is not None
    # finishing again changes nothing and shows the same code
    again = p.finish("something else")
    assert again.get_json()["completion_code"] == code
    with db.session() as s:
        assert s.scalar(select(Participant.debrief)) == "the left ones were grainy"
    # no answer after completion
    assert p.answer(trials[-1]).status_code == 409


def test_anonymous_participants_get_their_own_record(client, db, make_experiment, participant) -> None:  # type: ignore[no-untyped-def]
    slug = make_experiment("open", completion_code="DONE-1234", require_prolific_pid=False)
    a, b = participant(slug, anonymous=True), participant(slug, anonymous=True)
    assert a.token != b.token and a.created and b.created
    assert count(db, Participant) == 2
    a.prepare().answer_all()
    done = a.finish().get_json()
    assert done["status"] == "completed"
    # no Prolific id: no Prolific submission, so neither a completion code nor a redirect
    assert done["redirect_url"] is None and done["completion_code"] is None
    assert a.get_state()["completion_code"] is None


def test_duplicate_prolific_pid_resumes_then_shows_the_code(client, db, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    first = participant(experiment, prolific_pid="SAME")
    first.prepare()
    trials = first.trials()
    for t in trials[:5]:
        assert first.answer(t).status_code == 200
    second = participant(experiment, prolific_pid="SAME")
    assert not second.created and second.token == first.token
    assert second.state["next_index"] == 5 and second.state["consented"]
    # the resumed participant continues at trial 5 with the same planned trials
    assert [t["id"] for t in second.trials(5)] == [t["id"] for t in trials[5:]]
    second.answer_all(lambda t: "right")
    code = second.finish().get_json()["completion_code"]
    third = participant(experiment, prolific_pid="SAME")
    assert not third.created and third.state["status"] != "in_progress"
    assert third.state["completion_code"] == code
    assert count(db, Participant) == 1 and count(db, Response) == 12


def _database_concurrency(app) -> None:  # type: ignore[no-untyped-def]
    """Let 8 starts run at once in this process, so that the database's own locking is what is tested
    (one process admits one start at a time by default: experiment/admission.py, tests/test_burst.py)."""
    from experiment.admission import StartGate

    app.extensions["advbias"].start_gate = StartGate(concurrent=8)


def test_concurrent_starts_with_one_prolific_pid_make_one_record(app, db, experiment) -> None:  # type: ignore[no-untyped-def]
    _database_concurrency(app)
    def start(_: int) -> tuple[int, str]:
        reply = app.test_client().post(f"/api/v1/experiments/{experiment}/participants", json={"prolific_pid": "RACE", "session_id": "S1"})
        return reply.status_code, reply.get_json()["token"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(start, range(8)))
    assert {token for _, token in results} == {results[0][1]}
    assert sorted(code for code, _ in results).count(201) == 1
    assert count(db, Participant) == 1 and count(db, Trial) == 12


def test_lists_fill_evenly_even_under_concurrency(app, db, experiment) -> None:  # type: ignore[no-untyped-def]
    _database_concurrency(app)
    def start(i: int) -> int:
        reply = app.test_client().post(f"/api/v1/experiments/{experiment}/participants", json={"prolific_pid": f"P{i}"})
        assert reply.status_code == 201
        return i

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(start, range(12)))
    with db.session() as s:
        lists = Counter(s.scalars(select(Participant.list_index)).all())
    assert lists == {0: 2, 1: 2, 2: 2, 3: 2, 4: 1, 5: 1, 6: 1, 7: 1}  # 8 lists (2 sides x 4 rotations)


def test_least_filled_list_ignores_screened_out(client, db, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    first = participant(experiment, prolific_pid="A")
    with db.session() as s:
        assert s.scalar(select(Participant.list_index)) == 0
    first.prepare()
    first.answer_all(lambda t: "left")
    # fail every catch trial on purpose: choose the side that does not show the asked category
    with db.write() as s:
        s.execute(
            Response.__table__.update()
            .where(Response.trial_id.in_(select(Trial.id).where(Trial.kind == "catch", Trial.target_side == "left")))
            .values(response="right")
        )
    assert first.finish().get_json()["status"] == "screened_out"
    assert first.get_state()["completion_code"] == "OUT-5678"
    # list 0's only participant was screened out, so list 0 is again the least filled
    participant(experiment, prolific_pid="B")
    with db.session() as s:
        assert s.scalar(select(Participant.list_index).where(Participant.prolific_pid == "B")) == 0


def test_screen_out_and_completion_follow_the_catch_trials(client, db, make_experiment, participant) -> None:  # type: ignore[no-untyped-def]
    slug = make_experiment("catchy", catch_trials=2, max_catch_failures=0, screenout_code="NOPE",
                           completion_code="YES")
    good = participant(slug, prolific_pid="good").prepare()
    bad = participant(slug, prolific_pid="bad").prepare()
    trials = {p.token: {t["id"]: t for t in p.trials()} for p in (good, bad)}
    with db.session() as s:
        truth = {t.public_id: t for t in s.scalars(select(Trial))}

    def right_answer(t):  # type: ignore[no-untyped-def]
        return truth[t["id"]].target_side

    def wrong_answer(t):  # type: ignore[no-untyped-def]
        side = truth[t["id"]].target_side
        return ("right" if side == "left" else "left") if truth[t["id"]].kind == "catch" else side

    good.answer_all(right_answer)
    bad.answer_all(wrong_answer)
    assert good.finish().get_json()["completion_code"] == "YES"
    out = bad.finish().get_json()
    assert out["status"] == "screened_out" and out["completion_code"] == "NOPE"
    with db.session() as s:
        assert s.scalar(select(Participant.catch_failures).where(Participant.prolific_pid == "bad")) == 2
        assert s.scalar(select(Participant.catch_failures).where(Participant.prolific_pid == "good")) == 0
    assert trials  # both participants had their own trial lists


def test_idempotent_resubmission(client, db, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    p = participant(experiment).prepare()
    trials = p.trials()
    first = p.answer(trials[0], "left", key="key-0000-aaaa")
    replay = p.answer(trials[0], "right", key="key-0000-aaaa", rt_ms=1.0)  # a retry: the stored answer wins
    assert first.status_code == replay.status_code == 200
    assert first.get_json() == replay.get_json()
    assert replay.headers.get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in first.headers
    assert count(db, Response) == 1
    with db.session() as s:
        stored = s.scalar(select(Response))
        assert stored.response == "left" and stored.rt_ms == 612.5
    # the same key for another trial is refused; a new key for an answered trial is refused
    reused = p.answer(trials[1], key="key-0000-aaaa")
    assert reused.status_code == 409 and "another trial" in reused.get_json()["error"]
    twice = p.answer(trials[0], key="key-0000-bbbb")
    assert twice.status_code == 409 and "already answered" in twice.get_json()["error"]
    assert count(db, Response) == 1 and p.get_state()["next_index"] == 1


def test_concurrent_retries_store_once(app, db, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    p = participant(experiment).prepare()
    trial = p.trials()[0]
    body = {"trial_id": trial["id"], "idempotency_key": "same-key-123", "response": "right", "rt_ms": 400}
    barrier = threading.Barrier(6)

    def post(_: int):  # type: ignore[no-untyped-def]
        barrier.wait()
        reply = app.test_client().post(f"{p.base}/responses", json=body)
        return reply.status_code, json.dumps(reply.get_json(), sort_keys=True)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(post, range(6)))
    assert {code for code, _ in results} == {200}
    assert len({answer for _, answer in results}) == 1
    assert count(db, Response) == 1 and p.get_state()["next_index"] == 1


def test_wrong_order_is_rejected(client, db, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    p = participant(experiment).prepare()
    trials = p.trials()
    ahead = p.answer(trials[3])
    assert ahead.status_code == 409
    assert ahead.get_json()["next_index"] == 0 and "in order" in ahead.get_json()["error"]
    assert count(db, Response) == 0
    assert p.answer(trials[0]).status_code == 200
    assert p.answer(trials[2]).status_code == 409
    assert p.answer(trials[1]).status_code == 200
    assert count(db, Response) == 2


def test_foreign_trials_and_tokens_are_rejected(client, db, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    alice = participant(experiment, prolific_pid="alice").prepare()
    bob = participant(experiment, prolific_pid="bob").prepare()
    bobs_first = bob.trials()[0]
    reply = alice.answer(bobs_first)
    assert reply.status_code == 404 and reply.get_json() == {"error": "no such trial for this participant"}
    assert count(db, Response) == 0 and bob.get_state()["next_index"] == 0
    # a made-up token reads and writes nothing
    stranger = f"/api/v1/participants/{'x' * 32}"
    assert client.get(stranger).status_code == 404
    assert client.get(f"{stranger}/trials").status_code == 404
    body = {"trial_id": bobs_first["id"], "idempotency_key": "k" * 16, "response": "left", "rt_ms": 1}
    assert client.post(f"{stranger}/responses", json=body).status_code == 404
    assert count(db, Response) == 0


def test_closed_study_refuses_newcomers_but_lets_started_ones_finish(client, db, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    from experiment.models import Experiment

    started = participant(experiment, prolific_pid="early").prepare()
    with db.write() as s:
        s.scalar(select(Experiment)).active = False
    late = client.post(f"/api/v1/experiments/{experiment}/participants", json={"prolific_pid": "late"})
    assert late.status_code == 403 and "not accepting" in late.get_json()["error"]
    again = participant(experiment, prolific_pid="early")
    assert again.token == started.token
    started.answer_all()
    assert started.finish().status_code == 200
    assert count(db, Participant) == 1


def test_participant_never_sees_targets_or_budgets(app, client, participant, make_experiment) -> None:  # type: ignore[no-untyped-def]
    """Every byte a participant receives: pages, scripts, JSON, headers, image URLs and files."""
    slug = make_experiment("hidden", conditions=["targets", "vs_clean", "vs_flip", "vs_noise"], budgets=[16],
                           presentation=200)
    seen: list[tuple[str, dict[str, str], bytes]] = []

    @app.after_request
    def record(response):  # type: ignore[no-untyped-def]
        response.direct_passthrough = False
        seen.append((__import__("flask").request.full_path, dict(response.headers), response.get_data()))
        return response

    for path in ("/", f"/run/{slug}?PROLIFIC_PID=zz", "/static/run.js", "/static/style.css"):
        assert client.get(path).status_code == 200
    p = participant(slug, prolific_pid="zz").prepare()
    trials = p.trials()
    for t in trials:
        assert client.get(t["left"]).status_code == 200 and client.get(t["right"]).status_code == 200
        p.answer(t)
    p.finish()
    client.get(p.base)
    client.get("/api/v1/openapi.json")

    assert any("/responses" in path for path, _, _ in seen)
    with app.extensions["advbias"].db.session() as session:
        manifest_ids = set(session.scalars(select(Stimulus.stimulus_id)).all())
    questions = {t["question"] for t in trials}
    forbidden_words = re.compile(r"\b(cat|truck|adversarial|flip|noise|clean|eps|budget|pair_key|target)\b", re.I)
    for path, headers, body in seen:
        header_text = json.dumps(headers)
        assert not forbidden_words.search(header_text), (path, header_text)
        if path.startswith("/stimuli/"):
            name = path.split("?")[0].rsplit("/", 1)[1]
            assert re.fullmatch(r"[0-9a-f]{32}\.png", name)  # a keyed alias (tests/test_leaks.py)
            assert hashlib.sha256(body).hexdigest() not in manifest_ids
            assert b"tEXt" not in body and b"iTXt" not in body and b"zTXt" not in body
            assert "Last-Modified" not in headers and "ETag" not in headers
            continue
        if path.startswith("/api/v1/openapi.json"):
            continue  # the API's own description: names fields, not stimuli
        text = body.decode("utf-8")
        for question in questions:
            text = text.replace(question, "")
        if path.startswith("/static/") or path.startswith("/run/") or path.startswith("/?"):
            # static code and page shells: no category name, no budget vocabulary
            assert not re.search(r"\b(cat|truck)\b", text, re.I), path
            continue
        assert not forbidden_words.search(text), (path, forbidden_words.search(text).group(0), text[:300])
        if headers.get("Content-Type", "").startswith("application/json"):
            payload = json.loads(body)
            keys = _all_keys(payload)
            assert not keys & {"eps", "budget", "target", "left_target", "right_target", "condition", "pair",
                               "kind", "source", "target_side", "seed", "list"}, (path, keys)
    for t in trials:
        assert set(t) == {"id", "index", "practice", "question", "left", "right", "presentation_ms"}
        assert re.fullmatch(rf"/stimuli/{slug}/[0-9a-f]{{16}}/[0-9a-f]{{32}}\.png", t["left"])
        assert re.fullmatch(rf"/stimuli/{slug}/[0-9a-f]{{16}}/[0-9a-f]{{32}}\.png", t["right"])
        assert re.fullmatch(r"[0-9a-f]{16}", t["id"])
        assert t["presentation_ms"] == 200


def _all_keys(value) -> set[str]:  # type: ignore[no-untyped-def]
    if isinstance(value, dict):
        return set(value) | set().union(*(_all_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_all_keys(v) for v in value)) if value else set()
    return set()


def test_stimulus_urls_resist_path_tricks(client, experiment, participant, instance_dir) -> None:  # type: ignore[no-untyped-def]
    p = participant(experiment).prepare()
    good = p.trials()[0]["left"]
    assert client.get(good).status_code == 200
    (instance_dir / "secret_key_copy.png").write_text("not an image")
    for path in (
        "/stimuli/../secret_key",
        "/stimuli/%2e%2e%2fsecret_key",
        "/stimuli/..%2Fsecret_key_copy.png",
        "/stimuli/" + "A" * 64 + ".png",
        "/stimuli/" + "0" * 64 + ".png",
        good.rsplit("/", 1)[0] + "/" + "0" * 32 + ".png",
        good.rsplit("/", 1)[0] + "/../secret_key",
        "/stimuli/" + good.rsplit("/", 1)[1],
        "/stimuli/no-such-study/" + good.rsplit("/", 1)[1],
        good.replace(".png", ".PNG"),
        good + "/",
        "/stimuli/secret_key_copy.png",
    ):
        assert client.get(path).status_code == 404, path


def test_security_headers_and_no_inline_script(client, experiment) -> None:  # type: ignore[no-untyped-def]
    page = client.get(f"/run/{experiment}")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff" and page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "no-referrer" and page.headers["Cache-Control"] == "no-store"
    html = page.get_data(as_text=True)
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S)
    assert scripts and all(body.strip() == "" for body in scripts)
    assert all("src=" in tag for tag in re.findall(r"<script\b[^>]*>", html))
    assert not re.search(r"\sstyle\s*=", html) and "<style" not in html and not re.search(r"\son[a-z]+\s*=", html)
    assert client.get("/run/no-such-study").status_code == 404
