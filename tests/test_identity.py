"""Participant identity and launch limits (SQLite and PostgreSQL).

* A PROLIFIC_PID alone never hands over a participant: resuming needs the same
  SESSION_ID (and STUDY_ID) or the browser's own token; anything else is a 409
  without the token.
* Studies that send people back to Prolific need a PROLIFIC_PID; anonymous
  participants never get a completion code.
* New participants per address are limited (429 with Retry-After), shared by every
  server process through the database; resuming is not counted.
* Abandoned ``in_progress`` participants free their list slot after ``timeout_minutes``;
  screened-out ones free it unless ``screened_out_frees_slot`` is off.
* Behind a trusted proxy the client address and HTTPS come from ``X-Forwarded-*``;
  without one those headers are ignored.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import case, select, update

from experiment import create_app
from experiment.models import Experiment, Participant, Response, Trial, utcnow
from experiment.study import list_counts

START = "/api/v1/experiments/{slug}/participants"


def start(client, slug: str, **body: Any):  # type: ignore[no-untyped-def]
    return client.post(START.format(slug=slug), json=body)


def test_a_prolific_pid_alone_does_not_hand_over_a_participant(client, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    owner = participant(experiment, prolific_pid="VICTIM").prepare()  # study STUDY, session SESSION
    assert owner.answer(owner.trials()[0]).status_code == 200
    for body in (
        {"prolific_pid": "VICTIM"},
        {"prolific_pid": "VICTIM", "study_id": "STUDY", "session_id": "ANOTHER"},
        {"prolific_pid": "VICTIM", "study_id": "OTHER", "session_id": "SESSION"},
        {"prolific_pid": "VICTIM", "study_id": "STUDY", "session_id": "ANOTHER", "token": "forged-token"},
    ):
        refused = start(client, experiment, **body)
        assert refused.status_code == 409, body
        data = refused.get_json()
        assert "another session" in data["error"] and owner.token not in refused.get_data(as_text=True)
    # the same Prolific session resumes (a reload, or a new browser opened from Prolific's link) ...
    same = start(client, experiment, prolific_pid="VICTIM", study_id="STUDY", session_id="SESSION")
    assert same.status_code == 200 and same.get_json()["token"] == owner.token
    # ... and so does the browser's own token, whatever the URL says
    own = start(client, experiment, prolific_pid="VICTIM", session_id="CHANGED", token=owner.token)
    assert own.status_code == 200 and own.get_json()["token"] == owner.token


def test_a_finished_participant_is_not_handed_out_either(client, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    owner = participant(experiment, prolific_pid="DONE-PID").prepare()
    owner.answer_all()
    assert owner.finish().get_json()["completion_code"] == "DONE-1234"
    thief = start(client, experiment, prolific_pid="DONE-PID", study_id="STUDY", session_id="GUESS")
    assert thief.status_code == 409 and "DONE-1234" not in thief.get_data(as_text=True)


def test_a_record_started_without_session_resumes_only_with_its_token(client, experiment) -> None:  # type: ignore[no-untyped-def]
    first = start(client, experiment, prolific_pid="NOSESSION")
    assert first.status_code == 201
    assert start(client, experiment, prolific_pid="NOSESSION").status_code == 409
    again = start(client, experiment, prolific_pid="NOSESSION", token=first.get_json()["token"])
    assert again.status_code == 200


def test_prolific_studies_need_a_prolific_pid(client, make_experiment) -> None:  # type: ignore[no-untyped-def]
    prolific = make_experiment("via-prolific", completion_code="C1")  # default redirect: app.prolific.com
    refused = start(client, prolific)
    assert refused.status_code == 403 and "Prolific" in refused.get_json()["error"]
    assert start(client, prolific, prolific_pid="P1", session_id="S").status_code == 201
    elsewhere = make_experiment("elsewhere", completion_code="C2", redirect_url="https://example.org/done?c={code}")
    assert start(client, elsewhere).status_code == 201  # another panel: anonymous starts are allowed
    forced = make_experiment("forced", completion_code="C3", redirect_url="https://example.org/done?c={code}",
                             require_prolific_pid=True)
    assert start(client, forced).status_code == 403


@pytest.fixture
def limited_client(app_config, app):  # type: ignore[no-untyped-def]
    """A second app on the same database with a start limit of 3 per 10 minutes per address."""
    limited = create_app({**app_config, "START_LIMIT": "3/600"})
    yield limited.test_client()
    limited.extensions["advbias"].db.dispose()


def test_starts_per_address_are_limited(limited_client, make_experiment) -> None:  # type: ignore[no-untyped-def]
    slug = make_experiment("flood", completion_code="C", require_prolific_pid=False)
    made = [start(limited_client, slug, prolific_pid="EARLY", session_id="S")]
    made += [start(limited_client, slug) for _ in range(2)]
    assert [r.status_code for r in made] == [201, 201, 201]
    flood = start(limited_client, slug)
    assert flood.status_code == 429 and int(flood.headers["Retry-After"]) == 600
    assert "too many new participants" in flood.get_json()["error"]
    # resuming is not a new participant, and another address has its own count
    resumed = start(limited_client, slug, prolific_pid="EARLY", session_id="S")
    assert resumed.status_code == 200 and resumed.get_json()["token"] == made[0].get_json()["token"]
    assert start(limited_client, slug, prolific_pid="LATE", session_id="S").status_code == 429
    limited_client.environ_base["REMOTE_ADDR"] = "198.51.100.20"
    assert start(limited_client, slug).status_code == 201


def test_a_bad_start_limit_stops_the_app(app_config) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="start limit"):
        create_app({**app_config, "START_LIMIT": "lots"})


def test_anonymous_participants_get_no_completion_code(client, make_experiment, participant) -> None:  # type: ignore[no-untyped-def]
    slug = make_experiment("anon", completion_code="SECRET-CODE", require_prolific_pid=False)
    anon = participant(slug, anonymous=True).prepare()
    anon.answer_all()
    reply = anon.finish()
    assert reply.get_json()["status"] == "completed" and "SECRET-CODE" not in reply.get_data(as_text=True)
    named = participant(slug).prepare()
    named.answer_all()
    assert named.finish().get_json()["completion_code"] == "SECRET-CODE"


def _counts(db, slug: str) -> list[int]:  # type: ignore[no-untyped-def]
    with db.session() as s:
        exp = s.scalar(select(Experiment).where(Experiment.slug == slug))
        return list_counts(s, exp)


def test_abandoned_participants_free_their_slot(db, make_experiment, participant) -> None:  # type: ignore[no-untyped-def]
    slug = make_experiment("timeouts", completion_code="C", timeout_minutes=30)
    gone = participant(slug).prepare()
    assert sum(_counts(db, slug)) == 1
    with db.write() as s:  # 29 minutes later: still holds the slot
        s.execute(update(Participant).values(created_at=utcnow() - timedelta(minutes=29)))
    assert sum(_counts(db, slug)) == 1
    with db.write() as s:  # 31 minutes later: timed out, the slot is free
        s.execute(update(Participant).values(created_at=utcnow() - timedelta(minutes=31)))
    assert sum(_counts(db, slug)) == 0
    # the late participant may still finish; then they fill the slot again
    gone.answer_all()
    assert gone.finish().status_code == 200
    assert sum(_counts(db, slug)) == 1


@pytest.mark.parametrize("frees", [True, False])
def test_screened_out_participants_free_their_slot_by_default(db, make_experiment, participant, frees) -> None:  # type: ignore[no-untyped-def]
    config: dict[str, Any] = dict(completion_code="C", screenout_code="OUT", max_catch_failures=0)
    if not frees:
        config["screened_out_frees_slot"] = False
    slug = make_experiment(f"screen-{int(frees)}", **config)
    p = participant(slug).prepare()
    p.answer_all()
    with db.write() as s:  # every catch trial answered with the side that does not show the asked category
        s.execute(
            Response.__table__.update()
            .where(Response.trial_id.in_(select(Trial.id).where(Trial.kind == "catch")))
            .values(response=case((Trial.__table__.c.target_side == "left", "right"), else_="left"))
            .where(Trial.__table__.c.id == Response.trial_id)
        )
    assert p.finish().get_json()["status"] == "screened_out"
    assert sum(_counts(db, slug)) == (0 if frees else 1)


def test_proxy_headers_are_believed_only_from_trusted_proxies(app_config, app, make_experiment) -> None:  # type: ignore[no-untyped-def]
    slug = make_experiment("proxied", completion_code="C", require_prolific_pid=False)
    forwarded = {"X-Forwarded-For": "192.0.2.1", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "study.example"}
    direct = create_app({**app_config, "START_LIMIT": "1/600"})
    proxied = create_app({**app_config, "START_LIMIT": "1/600", "TRUSTED_PROXIES": "1"})
    try:
        plain = direct.test_client()
        assert "Strict-Transport-Security" not in plain.get("/", headers=forwarded).headers
        # forged X-Forwarded-For without a trusted proxy: the real address counts, so the limit holds
        assert plain.post(START.format(slug=slug), json={}, headers=forwarded).status_code == 201
        spoof = {**forwarded, "X-Forwarded-For": "192.0.2.99"}
        assert plain.post(START.format(slug=slug), json={}, headers=spoof).status_code == 429
        behind = proxied.test_client()
        assert behind.get("/", headers=forwarded).headers["Strict-Transport-Security"].startswith("max-age=")
        for address in ("192.0.2.10", "192.0.2.11"):  # each client address, as the proxy reports it, has its own count
            reply = behind.post(START.format(slug=slug), json={}, headers={**forwarded, "X-Forwarded-For": address})
            assert reply.status_code == 201
    finally:
        direct.extensions["advbias"].db.dispose()
        proxied.extensions["advbias"].db.dispose()


# --------------------------------------------------------------------------- identifiers are validated whole

def _variants(valid: str) -> dict[str, str]:
    """Near copies of a valid identifier that a validator must not take for it (or for a new one)."""
    variants = {
        "trailing newline": valid + "\n",
        "trailing CRLF": valid + "\r\n",
        "leading space": " " + valid,
        "trailing space": valid + " ",
        "trailing tab": valid + "\t",
        "no-break space": valid + "\u00a0",
        "zero-width space": valid + "\u200b",
        "Cyrillic look-alike": "\u0430" + valid[1:] if valid[0] in "a" else "\u0421" + valid[1:],
        "fullwidth digit": valid[:-1] + "\uff11",
        "Kelvin sign": "\u212a" + valid[1:],
        "dotless i": valid[:-1] + "\u0131",
        "superscript one": valid[:-1] + "\u00b9",
    }
    assert all(v != valid for v in variants.values())
    return variants


def _participant_rows(db) -> int:  # type: ignore[no-untyped-def]
    from sqlalchemy import func

    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Participant)), s.scalar(select(func.count()).select_from(Response))


def test_every_identifier_is_validated_whole(client, db, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    """``PROLIFIC_PID=X%0A`` is not a second participant, and no other identifier of the API takes such variants."""
    from urllib.parse import quote

    owner = participant(experiment, prolific_pid="X").prepare()  # study STUDY, session SESSION
    trial = owner.trials()[0]
    public_id = owner.trials()[0]["left"].split("/")[3]
    image = owner.trials()[0]["left"].rsplit("/", 1)[1][:-4]
    before = _participant_rows(db)
    identity = {"prolific_pid": "X", "study_id": "STUDY", "session_id": "SESSION"}
    answer = {"trial_id": trial["id"], "idempotency_key": "k" * 16, "response": "left", "rt_ms": 500}

    def refused(reply, *ok: int) -> None:  # type: ignore[no-untyped-def]
        assert 400 <= reply.status_code < 500 or reply.status_code in ok, reply.status_code
        if reply.status_code >= 400 and reply.is_json:
            assert reply.get_json()["error"]

    for field in ("prolific_pid", "study_id", "session_id"):
        for name, variant in _variants(identity[field]).items():
            reply = start(client, experiment, **{**identity, field: variant})
            # refused, or (never for the PID itself) the same participant: never a second record
            refused(reply)
            assert _participant_rows(db) == before, (field, name)
    for name, variant in _variants(owner.token).items():
        refused(start(client, experiment, **identity, token=variant))
        path = f"/api/v1/participants/{quote(variant, safe='')}"
        assert client.get(path).status_code == 404, name
        assert client.get(f"{path}/trials").status_code == 404, name
        for call, body in (("consent", {"consent": True}), ("responses", answer), ("finish", {"text": "x"})):
            assert client.post(f"{path}/{call}", json=body).status_code == 404, (name, call)
    for name, variant in _variants(trial["id"]).items():
        refused(owner.answer({**trial, "id": variant}))
    for name, variant in _variants("k" * 16).items():
        reply = owner.answer(trial, key=variant)
        assert reply.status_code == 400 and "idempotency_key" in reply.get_json()["error"], name
    for name, variant in _variants(experiment).items():
        assert client.post(START.format(slug=quote(variant, safe="")), json={}).status_code == 404, name
        assert client.get(f"/run/{quote(variant, safe='')}").status_code == 404, name
        assert client.get(f"/stimuli/{quote(variant, safe='')}/{public_id}/{image}.png").status_code == 404, name
    for name, variant in _variants(public_id).items():
        assert client.get(f"/stimuli/{experiment}/{quote(variant, safe='')}/{image}.png").status_code == 404, name
    for name, variant in _variants(image).items():
        assert client.get(f"/stimuli/{experiment}/{public_id}/{quote(variant, safe='')}.png").status_code == 404, name
    for name, variant in _variants("1").items():
        reply = client.get(f"{owner.base}/trials?start={quote(variant, safe='')}")
        assert reply.status_code == 400 and "integer" in reply.get_json()["error"], name
    assert _participant_rows(db) == before
    # the real one still works
    assert client.get(f"/stimuli/{experiment}/{public_id}/{image}.png").status_code == 200
    assert start(client, experiment, **identity).get_json()["token"] == owner.token


def test_admin_names_are_validated_whole(client, db) -> None:  # type: ignore[no-untyped-def]
    from experiment.accounts import set_password

    for name, variant in _variants("admin").items():
        with pytest.raises(ValueError):
            set_password(db, "a long enough password", variant)
