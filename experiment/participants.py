"""Participants: starting (or resuming) one, list assignment, consent, browser check, the trial list.

* list assignment locks the experiment row (PostgreSQL ``FOR UPDATE``; SQLite's
  ``BEGIN IMMEDIATE`` serialises writers anyway), so two participants arriving
  together cannot both see the same least-filled list;
* a second record for one PROLIFIC_PID is impossible (unique constraint); the
  loser of a race resumes the winner's record.
"""
from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from experiment.db import Database
from experiment.design import TrialSpec
from experiment.delivery import image_url
from experiment.errors import Forbidden, NotFound
from experiment.fields import BROWSER_FIELDS, TOKEN_RE, clean_id, validate_fields
from experiment.models import Experiment, Participant, Trial, utcnow
from experiment.study import get_experiment, list_counts, load_design

def start_participant(
    db: Database, slug: str, prolific_pid: Any = None, study_id: Any = None, session_id: Any = None
) -> tuple[Participant, bool]:
    """Create a participant (least-filled list, fresh seed) or resume the one with this PROLIFIC_PID."""
    pid = clean_id(prolific_pid, "PROLIFIC_PID")
    study = clean_id(study_id, "STUDY_ID")
    sess = clean_id(session_id, "SESSION_ID")
    with db.session() as session:
        exp = get_experiment(session, slug)
        if pid is not None:
            found = session.scalar(
                select(Participant).where(Participant.experiment_id == exp.id, Participant.prolific_pid == pid)
            )
            if found is not None:
                return found, False
        if not exp.active:
            raise Forbidden("this study is not accepting new participants")
        design = load_design(session, exp)
        exp_id = exp.id
    try:
        with db.write() as session:
            # Serialise assignments within this experiment (a no-op lock on SQLite, which already holds one).
            exp = session.scalar(select(Experiment).where(Experiment.id == exp_id).with_for_update())
            assert exp is not None
            if pid is not None:
                found = session.scalar(
                    select(Participant).where(Participant.experiment_id == exp.id, Participant.prolific_pid == pid)
                )
                if found is not None:
                    return found, False
            counts = list_counts(session, exp)
            list_index = counts.index(min(counts))
            seed = secrets.randbelow(2**31)
            specs = design.participant_trials(list_index, seed)
            participant = Participant(
                experiment_id=exp.id, public_id=secrets.token_hex(8), token=secrets.token_urlsafe(24),
                prolific_pid=pid, study_id=study, session_id=sess, list_index=list_index, seed=seed,
                status="in_progress", n_trials=len(specs), next_index=0,
            )
            session.add(participant)
            session.flush()
            # One bulk INSERT of plain rows (no ORM object per trial): the start is the heaviest call in a burst.
            session.execute(_INSERT_TRIALS, [_trial_row(participant.id, i, s) for i, s in enumerate(specs)])
        return participant, True
    except IntegrityError:
        if pid is None:
            raise
        with db.session() as session:  # the same PROLIFIC_PID arrived twice at once: resume the winner
            found = session.scalar(
                select(Participant).where(Participant.experiment_id == exp_id, Participant.prolific_pid == pid)
            )
            if found is None:
                raise
            return found, False


#: Built once: a Core executemany of plain rows (no ORM object or statement building per start).
_INSERT_TRIALS = insert(Trial.__table__)


def _trial_row(participant_id: int, index: int, s: TrialSpec) -> dict[str, Any]:
    """One planned trial as a row of the trials table."""
    return dict(
        public_id=secrets.token_hex(8), participant_id=participant_id, index=index, kind=s.kind,
        condition=s.condition, question=s.question, question_target=s.question_target, eps=s.eps, source=s.source,
        pair_key=s.pair_key, left_stimulus_id=s.left_stimulus_id, right_stimulus_id=s.right_stimulus_id,
        left_target=s.left_target, right_target=s.right_target, left_condition=s.left_condition,
        right_condition=s.right_condition, target_side=s.target_side, presentation_ms=s.presentation_ms,
    )


def get_participant(session: Session, token: Any) -> Participant:
    if not isinstance(token, str) or not TOKEN_RE.match(token):
        raise NotFound("unknown participant")
    participant = session.scalar(select(Participant).where(Participant.token == token))
    if participant is None:
        raise NotFound("unknown participant")
    return participant


def participant_state(session: Session, participant: Participant) -> dict[str, Any]:
    """What the participant's browser may know: progress and, once finished, the code. No design details."""
    exp = session.get(Experiment, participant.experiment_id)
    assert exp is not None
    settings = exp.settings
    n_practice = session.scalar(
        select(func.count()).select_from(Trial).where(Trial.participant_id == participant.id, Trial.kind == "practice")
    )
    code = None
    if participant.status == "completed":
        code = settings["completion_code"]
    elif participant.status == "screened_out":
        code = settings["screenout_code"]
    redirect = None
    if code and participant.prolific_pid:
        redirect = settings["redirect_url"].format(code=code)
    return {
        "token": participant.token,
        "status": participant.status,
        "consented": participant.consented_at is not None,
        "browser_checked": participant.browser is not None,
        "n_trials": participant.n_trials,
        "n_practice": n_practice,
        "next_index": participant.next_index,
        "debriefed": participant.debrief is not None,
        "completion_code": code,
        "redirect_url": redirect,
    }


def record_consent(db: Database, token: Any) -> dict[str, Any]:
    with db.write() as session:
        participant = get_participant(session, token)
        session.execute(
            update(Participant)
            .where(Participant.id == participant.id, Participant.consented_at.is_(None))
            .values(consented_at=utcnow())
        )
        session.flush()
        session.refresh(participant)
        return participant_state(session, participant)


#: A field spec is (kind, low, high) with kind bool/int/number/str (ranges or lengths), or ("enum", choices, None).
def record_browser_check(db: Database, token: Any, payload: Any) -> dict[str, Any]:
    data = validate_fields(payload, BROWSER_FIELDS, ("window_width", "window_height"))
    with db.write() as session:
        participant = get_participant(session, token)
        if participant.consented_at is None:
            raise Forbidden("consent is needed first")
        if participant.browser is None:  # the first check is the one kept
            participant.browser = data
            participant.refresh_hz = data.get("refresh_hz")
        session.flush()
        return participant_state(session, participant)


def ready_for_trials(participant: Participant) -> None:
    if participant.consented_at is None:
        raise Forbidden("consent is needed before the trials")
    if participant.browser is None:
        raise Forbidden("the browser check is needed before the trials")


def trial_view(trial: Trial, exp: Experiment) -> dict[str, Any]:
    """A trial as the browser sees it: opaque ids and keyed image aliases only, nothing about targets or budgets."""
    return {
        "id": trial.public_id,
        "index": trial.index,
        "practice": trial.kind == "practice",
        "question": trial.question,
        "left": image_url(exp, trial.left_stimulus_id),
        "right": image_url(exp, trial.right_stimulus_id),
        "presentation_ms": trial.presentation_ms,
    }


def list_trials(db: Database, token: Any, start: int | None, count: int) -> dict[str, Any]:
    with db.session() as session:
        participant = get_participant(session, token)
        ready_for_trials(participant)
        first = participant.next_index if start is None else start
        trials = session.scalars(
            select(Trial)
            .where(Trial.participant_id == participant.id, Trial.index >= first)
            .order_by(Trial.index)
            .limit(count)
        ).all()
        exp = session.get(Experiment, participant.experiment_id)
        assert exp is not None
        return {"next_index": participant.next_index, "n_trials": participant.n_trials,
                "trials": [trial_view(t, exp) for t in trials]}


