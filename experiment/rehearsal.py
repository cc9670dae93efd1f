"""Rehearsing a study: preview links and voided participants.

A researcher tries the study before recruiting, and test runs must not distort the
counterbalancing or the data:

* a **preview link** (``/run/SLUG?preview=KEY``, on the admin page and from
  ``advbias experiment preview SLUG``) runs the whole study, closed or open, without a
  PROLIFIC_PID; the participant it makes is marked ``preview``: it takes no list slot
  and never appears in the export. The key is an HMAC of the slug under the
  experiment's own secret (its delivery key), so it cannot be guessed from the URL of
  the study and needs no extra storage;
* **voiding** (``advbias participants void SLUG ID... --reason TEXT`` or the admin's
  button) sets a participant aside: their slot is freed at once and the export leaves
  them out unless asked for (``--include-void``, where they carry the status ``void``).
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Iterable

from sqlalchemy import or_, select, update

from experiment.db import Database
from experiment.errors import NotFound, StudyError
from experiment.models import Experiment, Participant, utcnow
from experiment.study import get_experiment

#: The longest void reason kept (it is a note for the researcher, not data).
MAX_REASON = 500


def preview_key(exp: Experiment) -> str:
    """The experiment's preview key: whoever holds it may rehearse the study."""
    return hmac.new(exp.delivery_key.encode(), f"preview:{exp.slug}".encode(), hashlib.sha256).hexdigest()[:32]


def is_preview(exp: Experiment, key: str | None) -> bool:
    """Whether ``key`` is this experiment's preview key (compared in constant time)."""
    return bool(key) and hmac.compare_digest(str(key), preview_key(exp))


def preview_path(exp: Experiment) -> str:
    """The path of the preview link (the server's address goes in front)."""
    return f"/run/{exp.slug}?preview={preview_key(exp)}"


def void_participants(db: Database, slug: str, ids: Iterable[str], reason: str) -> list[str]:
    """Void the participants named by export id (``participant``) or PROLIFIC_PID; returns their export ids.

    Every name must match a participant of the experiment (else nothing is changed);
    voiding one already void keeps the first reason. Raises NotFound or StudyError.
    """
    wanted = [i for i in dict.fromkeys(ids) if i]
    reason = (reason or "").strip()
    if not wanted:
        raise StudyError("name at least one participant to void")
    if not reason:
        raise StudyError("a reason is needed to void a participant (it is kept with the record)")
    if len(reason) > MAX_REASON:
        raise StudyError(f"the reason must be at most {MAX_REASON} characters")
    with db.write() as session:
        exp = get_experiment(session, slug)
        found = session.execute(
            select(Participant.id, Participant.public_id, Participant.prolific_pid).where(
                Participant.experiment_id == exp.id,
                or_(Participant.public_id.in_(wanted), Participant.prolific_pid.in_(wanted)),
            )
        ).all()
        known = {r.public_id for r in found} | {r.prolific_pid for r in found if r.prolific_pid}
        missing = [i for i in wanted if i not in known]
        if missing:
            raise NotFound(f"no participant {', '.join(missing)[:200]} in experiment {slug!r}")
        session.execute(
            update(Participant)
            .where(Participant.id.in_([r.id for r in found]), Participant.voided_at.is_(None))
            .values(voided_at=utcnow(), void_reason=reason)
        )
    return sorted(r.public_id for r in found)
