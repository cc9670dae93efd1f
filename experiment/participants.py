"""Participants: starting (or resuming) one, list assignment, consent, browser check, the trial list.

* list assignment locks the experiment row (PostgreSQL ``FOR UPDATE``; SQLite's
  ``BEGIN IMMEDIATE`` serialises writers anyway), so two participants arriving
  together cannot both see the same least-filled list;
* a second record for one PROLIFIC_PID is impossible (unique constraint); the
  loser of a race resumes the winner's record.

Identity (who may resume a record): a PROLIFIC_PID alone is public enough (it appears
in URLs, screenshots, support e-mails) that it must not hand over a participant's
secret token. A returning client resumes a record only with the browser's own token,
or with the same Prolific SESSION_ID (and STUDY_ID) the record was started with; any
other start for a PROLIFIC_PID that already has a record is refused with 409 and never
sees the token (:func:`resume_allowed`).

Starts: new records are limited per client address (:class:`StartPolicy`, shared by
every server through :mod:`experiment.throttle`); studies with a Prolific completion
URL accept only starts that carry a PROLIFIC_PID (``require_prolific_pid``).
"""
from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from experiment.db import Database
from experiment import throttle
from experiment.delivery import image_url
from experiment.design import TrialSpec
from experiment.errors import Conflict, Forbidden, NotFound, StudyError
from experiment.fields import BROWSER_FIELDS, TOKEN_RE, clean_id, validate_fields
from experiment.models import Experiment, Participant, Trial, utcnow
from experiment.study import get_experiment, list_counts, load_design


class TooManyStarts(StudyError):
    """Too many new participants from one address within the window (HTTP 429)."""

    status = 429


@dataclass(frozen=True)
class StartPolicy:
    """The per-address limit on new participants: at most ``limit`` per ``window_s`` seconds.

    ``limit = 0`` turns the limit off (the load benchmark and ``advbias simulate`` start
    hundreds of participants from 127.0.0.1). ``secret`` keys the stored address hash.
    """

    secret: str
    address: str
    limit: int = 0
    window_s: float = 600.0
    clock: throttle.Clock = utcnow

    def admit(self, db: Database) -> None:
        """Count one new participant from this address; raises :class:`TooManyStarts` past the limit."""
        if self.limit <= 0:
            return
        key = throttle.throttle_key(self.secret, "start-addr", self.address)
        if secrets.randbelow(200) == 0:  # now and then, drop counters of addresses long gone
            throttle.purge(db, clock=self.clock)
        if throttle.hit(db, key, self.window_s, clock=self.clock) > self.limit:
            raise TooManyStarts(
                "too many new participants from this network address: try again later", retry_after=self.window_s
            )


def resume_allowed(found: Participant, study: str | None, sess: str | None, token: str | None) -> bool:
    """May this start resume ``found``? Only with its token, or with its own SESSION_ID and STUDY_ID."""
    if token is not None and hmac.compare_digest(token, found.token):
        return True
    if found.session_id is None or sess is None or not hmac.compare_digest(sess, found.session_id):
        return False
    return found.study_id is None or study == found.study_id


def _resume(found: Participant, study: str | None, sess: str | None, token: str | None) -> Participant:
    if not resume_allowed(found, study, sess, token):
        raise Conflict(
            "this PROLIFIC_PID is already taking part in another session: please continue in the browser where "
            "you started, or write to the researcher through Prolific", reason="duplicate",
        )
    return found


def start_participant(
    db: Database, slug: str, prolific_pid: Any = None, study_id: Any = None, session_id: Any = None,
    *, token: Any = None, policy: StartPolicy | None = None, preview: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Create a participant (least-filled list, fresh seed) or resume the one with this PROLIFIC_PID.

    Returns the participant's state (:func:`participant_state`) and whether it was created.
    Resuming needs the participant's token or their SESSION_ID (:func:`resume_allowed`);
    a new record is counted against ``policy``'s per-address limit.

    Everything that does not need the experiment's lock happens before it is taken (the
    identity look-up, the start limit, the new record's secrets), so the locked section is
    only "lock, count the lists, insert the participant and its trials, commit". A second
    start for the same PROLIFIC_PID racing this one cannot make a second record: the
    unique constraint refuses it, and the loser resumes the winner.

    A ``preview`` start (the admin's rehearsal link, checked by the caller) is let in while
    the study is closed and without a PROLIFIC_PID; it takes no list slot (:func:`study.list_counts`).
    """
    pid = clean_id(prolific_pid, "PROLIFIC_PID")
    study = clean_id(study_id, "STUDY_ID")
    sess = clean_id(session_id, "SESSION_ID")
    own = clean_id(token, "token")
    with db.session() as session:
        exp = get_experiment(session, slug)  # detached afterwards: its columns stay readable
        if pid is not None:
            found = session.scalar(
                select(Participant).where(Participant.experiment_id == exp.id, Participant.prolific_pid == pid)
            )
            if found is not None:
                return participant_state(session, _resume(found, study, sess, own)), False
        elif exp.settings.get("require_prolific_pid") and not preview:
            raise Forbidden("this study takes part through Prolific: open it from your Prolific study page",
                            reason="no_pid")
        if not exp.active and not preview:
            raise Forbidden("this study is not accepting new participants", reason="closed")
        design = load_design(session, exp)
    if policy is not None:
        policy.admit(db)
    seed = secrets.randbelow(2**31)
    participant = Participant(
        experiment_id=exp.id, public_id=secrets.token_hex(8), token=secrets.token_urlsafe(24),
        prolific_pid=pid, study_id=study, session_id=sess, seed=seed, status="in_progress", next_index=0,
        preview=preview,
    )
    try:
        with db.write() as session:
            participant.list_index = _least_filled_list(session, exp)
            specs = design.participant_trials(participant.list_index, seed)
            participant.n_trials = len(specs)
            session.add(participant)
            session.flush()
            # One bulk INSERT of plain rows (no ORM object per trial): the start is the heaviest call in a burst.
            session.execute(_INSERT_TRIALS, [_trial_row(participant.id, i, s) for i, s in enumerate(specs)])
        return _state(participant, exp.settings, sum(s.kind == "practice" for s in specs)), True
    except IntegrityError:
        if pid is None:
            raise
    with db.session() as session:  # the same PROLIFIC_PID started twice at once and the other start won
        winner = session.scalar(
            select(Participant).where(Participant.experiment_id == exp.id, Participant.prolific_pid == pid)
        )
        if winner is None:
            raise Conflict("this PROLIFIC_PID is starting in another window right now: please try again",
                           reason="busy")
        return participant_state(session, _resume(winner, study, sess, own)), False


def _least_filled_list(session: Session, exp: Experiment) -> int:
    """Lock the experiment's row and return its least-filled list (the lowest index among equals).

    The lock (PostgreSQL ``FOR UPDATE``; a no-op on SQLite, whose write transaction already
    excludes every other writer) is held until the participant is committed, so two
    starts can never both see the same list as least filled. Only the id is locked and
    read: the row's JSON columns stay on the server.
    """
    session.execute(select(Experiment.id).where(Experiment.id == exp.id).with_for_update())
    counts = list_counts(session, exp)
    return counts.index(min(counts))


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
        model_set=s.model_set,
    )


def get_participant(session: Session, token: Any) -> Participant:
    if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
        raise NotFound("unknown participant")
    participant = session.scalar(select(Participant).where(Participant.token == token))
    if participant is None:
        raise NotFound("unknown participant")
    return participant


def participant_state(session: Session, participant: Participant) -> dict[str, Any]:
    """What the participant's browser may know: progress and, once finished, the code. No design details."""
    exp = session.get(Experiment, participant.experiment_id)
    assert exp is not None
    n_practice = session.scalar(
        select(func.count()).select_from(Trial).where(Trial.participant_id == participant.id, Trial.kind == "practice")
    )
    return _state(participant, exp.settings, n_practice or 0)


def _state(participant: Participant, settings: dict[str, Any], n_practice: int) -> dict[str, Any]:
    """:func:`participant_state` from what is already known (a start knows it without asking the database)."""
    code = None
    if participant.prolific_pid:  # an anonymous participant has no Prolific submission to complete
        if participant.status == "completed":
            code = settings["completion_code"]
        elif participant.status == "screened_out":
            code = settings["screenout_code"]
    redirect = None
    if code:
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
        "preview": bool(participant.preview),
        # What the study was about: only once the trials are over (before, it would give the hypothesis away).
        "debrief_paragraphs": None if participant.status == "in_progress" else paragraphs(settings.get("debrief_text") or ""),
    }


def paragraphs(text: str) -> list[str]:
    """A text's paragraphs (separated by blank lines), as the page shows them."""
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def state_of(db: Database, token: Any) -> dict[str, Any]:
    """The participant's state (:func:`participant_state`) by token; raises NotFound."""
    with db.session() as session:
        return participant_state(session, get_participant(session, token))


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


def trial_view(trial: Trial, exp: Experiment, participant: str) -> dict[str, Any]:
    """A trial as the browser sees it: opaque ids and keyed image aliases only, nothing about targets or budgets."""
    return {
        "id": trial.public_id,
        "index": trial.index,
        "practice": trial.kind == "practice",
        "question": trial.question,
        "left": image_url(exp, participant, trial.left_stimulus_id),
        "right": image_url(exp, participant, trial.right_stimulus_id),
        "presentation_ms": trial.presentation_ms,
    }


def _mark_delivered(db: Database, participant: Participant, trials: Any) -> None:
    """Stamp the first delivery of each unanswered trial (the start of its ``server_rt_ms``)."""
    fresh = [t.id for t in trials if t.delivered_at is None and t.index >= participant.next_index]
    if not fresh or participant.status != "in_progress":
        return
    with db.write() as session:
        session.execute(
            update(Trial).where(Trial.id.in_(fresh), Trial.delivered_at.is_(None)).values(delivered_at=utcnow())
        )


def list_trials(db: Database, token: Any, start: int | None, count: int) -> dict[str, Any]:
    """A page of the participant's trials; unanswered ones get their delivery time (the server's clock)."""
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
        _mark_delivered(db, participant, trials)
        return {"next_index": participant.next_index, "n_trials": participant.n_trials,
                "trials": [trial_view(t, exp, participant.public_id) for t in trials]}


