"""Answers and the end of a session.

A response is stored only if ``participants.next_index`` still equals the trial's
index (``UPDATE ... WHERE next_index = :i``), and a trial or an idempotency key can
be stored once only (unique constraints). A replay with the same key returns the
stored answer and writes nothing.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from experiment.db import Database
from experiment.errors import Conflict, NotFound, StudyError
from experiment.fields import GEOMETRY_FIELDS, KEY_RE, RESPONSE_FIELDS, TOKEN_RE, validate_fields
from experiment.models import Experiment, Participant, Response, Trial, iso_utc, utcnow
from experiment.participants import get_participant, participant_state, ready_for_trials

def _answer(trial: Trial, response: Response, n_trials: int) -> dict[str, Any]:
    """The reply to a stored response; a replay gets exactly the same reply."""
    return _answer_values(trial.public_id, trial.index, n_trials, response.server_received_at)


def _answer_values(trial_public_id: str, index: int, n_trials: int, received_at: datetime) -> dict[str, Any]:
    return {
        "trial_id": trial_public_id,
        "index": index,
        "stored": True,
        "next_index": index + 1,
        "done": index + 1 >= n_trials,
        "received_at": iso_utc(received_at),
    }


# The fast path's statements, built once: building a statement and computing its cache key cost
# more CPU than running it, and a prebuilt statement memoizes its key (SQLAlchemy then reuses the
# compiled SQL). Table-level (Core) constructs avoid the ORM's per-call overhead.
_P, _T, _R = Participant.__table__, Trial.__table__, Response.__table__
_FAST_LOOKUP = (
    select(_P.c.id, _P.c.n_trials, _P.c.next_index, _P.c.status, _P.c.consented_at, _P.c.browser,
           _P.c.last_answer_at, _T.c.id.label("trial_id"), _T.c.index.label("trial_index"), _T.c.delivered_at)
    .select_from(_P.outerjoin(_T, and_(_T.c.participant_id == _P.c.id, _T.c.public_id == bindparam("trial_pid"))))
    .where(_P.c.token == bindparam("token"))
)
_FAST_ADVANCE = (
    update(_P)
    .where(_P.c.id == bindparam("b_pid"), _P.c.next_index == bindparam("b_index"))
    .values(next_index=bindparam("b_index") + 1, last_answer_at=bindparam("b_received"))
)
_FAST_INSERT = insert(_R)


def server_rt_ms(received: datetime, delivered: datetime | None, last_answer: datetime | None) -> float | None:
    """Milliseconds the server saw for this trial: from the later of its delivery and the previous answer.

    None for a trial that was never delivered through the trial list. The interval
    holds the page's fixation, presentation, response and inter-trial interval plus
    network time, so a browser running the study cannot go below the experiment's
    fixed delays; a scripted client answering at once shows intervals of a few ms.
    """
    if delivered is None:
        return None
    start = _aware(delivered)
    if last_answer is not None:
        start = max(start, _aware(last_answer))
    return max(0.0, (_aware(received) - start).total_seconds() * 1000.0)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)  # SQLite: naive UTC


class _NotSimple(Exception):
    """The fast path cannot store this answer as is; the careful path decides what happens."""


def _replay(session: Session, participant_id: int, n_trials: int, key: str, trial_public_id: str):
    stored = session.scalar(
        select(Response).where(Response.participant_id == participant_id, Response.idempotency_key == key)
    )
    if stored is None:
        return None
    trial = session.get(Trial, stored.trial_id)
    assert trial is not None
    if trial.public_id != trial_public_id:
        raise Conflict("this idempotency key was already used for another trial")
    return _answer(trial, stored, n_trials)


def _store_fast(
    db: Database, token: str, trial_pid: str, key: str, source: str, data: dict[str, Any]
) -> dict[str, Any] | None:
    """Store the answer if it is the simple case; None sends the request to the careful path."""
    # Fast path (almost every request): the next trial of a ready participant, in one short
    # transaction of three prebuilt statements. Anything unusual (replay, wrong order, not ready,
    # a race) falls through to the careful path of record_response, which gives the precise answer.
    try:
        with db.write_connection() as conn:
            row = conn.execute(_FAST_LOOKUP, {"token": token, "trial_pid": trial_pid}).first()
            if row is None:
                raise NotFound("unknown participant")
            if (
                row.trial_id is None or row.trial_index != row.next_index or row.status != "in_progress"
                or row.consented_at is None or row.browser is None
            ):
                raise _NotSimple
            received = utcnow()
            moved = conn.execute(
                _FAST_ADVANCE, {"b_pid": row.id, "b_index": row.trial_index, "b_received": received}
            ).rowcount
            if moved != 1:
                raise _NotSimple
            conn.execute(
                _FAST_INSERT,
                {
                    "trial_id": row.trial_id, "participant_id": row.id, "idempotency_key": key,
                    "response": data["response"], "response_source": source, "rt_ms": data["rt_ms"],
                    "onset_frame_ms": data.get("onset_frame_ms"), "offset_frame_ms": data.get("offset_frame_ms"),
                    "fullscreen": bool(data.get("fullscreen")), "blurred": bool(data.get("blurred")),
                    "blur_events": int(data.get("blur_events") or 0), "server_received_at": received,
                    "server_rt_ms": server_rt_ms(received, row.delivered_at, row.last_answer_at),
                    **{name: data.get(name) for name in GEOMETRY_FIELDS},
                },
            )
        return _answer_values(trial_pid, row.trial_index, row.n_trials, received)
    except (_NotSimple, IntegrityError):
        return None


def record_response(db: Database, token: Any, payload: Any) -> tuple[dict[str, Any], bool]:
    """Store one answer; returns (answer, replayed). Raises NotFound/Conflict/Forbidden/StudyError."""
    data = validate_fields(payload, RESPONSE_FIELDS, ("trial_id", "idempotency_key", "response", "rt_ms"))
    source = data.get("response_source") or "key"
    key, trial_pid = data["idempotency_key"], data["trial_id"]
    if not KEY_RE.fullmatch(key):
        raise StudyError("idempotency_key must be 8-64 letters, digits, '-' or '_'")
    if not TOKEN_RE.fullmatch(trial_pid):
        raise NotFound("no such trial for this participant")
    if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
        raise NotFound("unknown participant")

    fast = _store_fast(db, token, trial_pid, key, source, data)
    if fast is not None:
        return fast, False

    conflict: StudyError | None = None
    try:
        with db.write() as session:
            participant = get_participant(session, token)
            replay = _replay(session, participant.id, participant.n_trials, key, trial_pid)
            if replay is not None:
                return replay, True
            ready_for_trials(participant)
            trial = session.scalar(
                select(Trial).where(Trial.public_id == trial_pid, Trial.participant_id == participant.id)
            )
            if trial is None:
                raise NotFound("no such trial for this participant")
            if participant.status != "in_progress":
                raise Conflict("this participant has already finished")
            if trial.index < participant.next_index:
                raise Conflict("this trial was already answered", next_index=participant.next_index)
            if trial.index != participant.next_index:
                raise Conflict(
                    f"trials must be answered in order: the next one is {participant.next_index}",
                    next_index=participant.next_index,
                )
            received, last_answer = utcnow(), participant.last_answer_at
            moved = session.execute(
                update(Participant)
                .where(Participant.id == participant.id, Participant.next_index == trial.index)
                .values(next_index=trial.index + 1, last_answer_at=received)
            ).rowcount
            if moved != 1:
                raise Conflict("another answer to this trial was stored first")
            response = Response(
                trial_id=trial.id, participant_id=participant.id, idempotency_key=key, response=data["response"],
                response_source=source, rt_ms=data["rt_ms"], onset_frame_ms=data.get("onset_frame_ms"),
                offset_frame_ms=data.get("offset_frame_ms"), fullscreen=bool(data.get("fullscreen")),
                blurred=bool(data.get("blurred")), blur_events=int(data.get("blur_events") or 0),
                server_received_at=received, server_rt_ms=server_rt_ms(received, trial.delivered_at, last_answer),
                **{name: data.get(name) for name in GEOMETRY_FIELDS},
            )
            session.add(response)
            session.flush()
            answer = _answer(trial, response, participant.n_trials)
        return answer, False
    except Conflict as exc:
        conflict = exc
    except IntegrityError:
        conflict = Conflict("another answer to this trial was stored first")
    # A concurrent request may have stored this very key: then this is a replay, not a conflict.
    with db.session() as session:
        participant = get_participant(session, token)
        replay = _replay(session, participant.id, participant.n_trials, key, trial_pid)
        if replay is not None:
            return replay, True
    raise conflict


def median(values: list[float]) -> float | None:
    """The median (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def screen_flags(settings: dict[str, Any], catch_failures: int, median_rt_ms: float | None,
                 median_server_rt_ms: float | None) -> list[str]:
    """Why a finished participant is screened out (empty: they complete); the one rule, also shown by the admin.

    * more catch failures than ``max_catch_failures``;
    * a median main-trial ``rt_ms`` (the page's own clock, from the pair's onset) below
      ``min_median_rt_ms``: nobody compares two pictures in a quarter of a second;
    * a median ``server_rt_ms`` below ``min_median_trial_ms`` (a scripted client; off by default).
    """
    flags = []
    if catch_failures > int(settings.get("max_catch_failures") or 0):
        flags.append(f"catch failures {catch_failures} > {settings.get('max_catch_failures') or 0}")
    floor = float(settings.get("min_median_rt_ms") or 0)
    if floor > 0 and median_rt_ms is not None and median_rt_ms < floor:
        flags.append(f"median rt {median_rt_ms:.0f} ms < {floor:g} ms")
    server_floor = float(settings.get("min_median_trial_ms") or 0)
    if server_floor > 0 and median_server_rt_ms is not None and median_server_rt_ms < server_floor:
        flags.append(f"median server time {median_server_rt_ms:.0f} ms < {server_floor:g} ms")
    return flags


def _timing(session: Session, participant_id: int) -> tuple[float | None, float | None]:
    """(median main-trial rt_ms, median server_rt_ms of main and catch trials) of one participant."""
    rows = session.execute(
        select(Trial.kind, Response.rt_ms, Response.server_rt_ms)
        .join(Trial, Trial.id == Response.trial_id)
        .where(Trial.participant_id == participant_id, Trial.kind != "practice")
    ).all()
    main_rt = median([rt for kind, rt, _ in rows if kind == "main" and rt is not None])
    server = median([srv for _, _, srv in rows if srv is not None])
    return main_rt, server


def finish(db: Database, token: Any, payload: Any) -> dict[str, Any]:
    """Record the debrief answer and complete (or screen out) the participant; idempotent."""
    data = validate_fields(payload, {"text": ("str", 0, 5000)}, ())
    text = data.get("text") or ""
    with db.write() as session:
        participant = get_participant(session, token)
        if participant.status != "in_progress":
            return participant_state(session, participant)
        if participant.next_index < participant.n_trials:
            raise Conflict(
                f"{participant.n_trials - participant.next_index} trial(s) are not answered yet",
                next_index=participant.next_index,
            )
        exp = session.get(Experiment, participant.experiment_id)
        assert exp is not None
        failures = session.scalar(
            select(func.count())
            .select_from(Response)
            .join(Trial, Trial.id == Response.trial_id)
            .where(Trial.participant_id == participant.id, Trial.kind == "catch", Response.response != Trial.target_side)
        ) or 0
        screen_out = bool(screen_flags(exp.settings, failures, *_timing(session, participant.id)))
        session.execute(
            update(Participant)
            .where(Participant.id == participant.id, Participant.status == "in_progress")
            .values(
                status="screened_out" if screen_out else "completed",
                debrief=text,
                catch_failures=failures,
                completed_at=utcnow(),
            )
        )
        session.flush()
        session.refresh(participant)
        return participant_state(session, participant)


