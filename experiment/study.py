"""Experiments: creating one from a stimulus set and a configuration, finding it, its design and lists.

Every write is one short transaction whose correctness under concurrency rests on
database constraints and compare-and-set updates, never on a check made earlier in
Python (see experiment/participants.py and experiment/responses.py).
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Mapping

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from advbias.errors import InputError, InputFileExists
from advbias.manifest import StimulusRow
from experiment.db import Database
from experiment.design import Design
from experiment.config import design_config_from_settings, jsonable, resolve_config
from experiment.errors import NotFound
from experiment.fields import SLUG_RE
from experiment.models import Experiment, Participant, Stimulus, iso_utc, utcnow
from experiment.stimulus_set import import_images, read_set

def analysis_plan(text: str) -> dict[str, str]:
    """The stored form of an analysis plan (``analysis.toml``): its text, sha256, and when it was stored.

    Stored when the experiment is created, so before any answer exists; the export's
    sidecar carries it, and ``advbias analyze`` reports it as the preregistration.
    """
    import hashlib

    return {"text": text, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "stored_at": iso_utc(utcnow())}


def create_experiment(
    db: Database, slug: str, setdir: Path, raw_config: Mapping[str, Any], store: Path, *, link: bool = False,
    plan: Mapping[str, str] | None = None,
) -> tuple[Experiment, Design, bool]:
    """Import a stimulus set as experiment ``slug``; returns (experiment, design, created).

    ``plan`` (from :func:`analysis_plan`) is stored in the experiment's settings. Re-running
    with the same set, configuration and plan changes nothing and returns
    ``created=False``; the same slug with anything different is refused.
    """
    if not SLUG_RE.fullmatch(slug):
        raise InputError(f"experiment name {slug!r} must be 1-63 lowercase letters, digits or '-'")
    rows, info, digest = read_set(Path(setdir))
    design_config, settings = resolve_config(raw_config)
    design = Design(rows, design_config)
    settings["design_summary"] = design.summary()
    if plan is not None:
        settings["analysis_plan"] = dict(plan)

    with db.session() as session:
        existing = session.scalar(select(Experiment).where(Experiment.slug == slug))
        if existing is not None:
            same = _same_or_refuse(existing, digest, raw_config, plan)
            # Another machine of the same study (one database, its own instance folder) needs the images too.
            import_images(Path(setdir), rows, store, link=link)
            return same, load_design(session, existing), False

    import_images(Path(setdir), rows, store, link=link)
    try:
        with db.write() as session:
            exp = Experiment(
                slug=slug, set_hash=digest, set_info=jsonable(info), settings=settings, n_lists=design.n_lists,
                active=True,
            )
            session.add(exp)
            session.flush()
            session.add_all(
                Stimulus(
                    experiment_id=exp.id, stimulus_id=r.stimulus_id, source=r.source, source_sha256=r.source_sha256,
                    condition=r.condition, pair=r.pair, target=r.target, eps=r.eps, pair_key=r.pair_key,
                    ensemble_category=r.ensemble_category, ensemble_category_prob=r.ensemble_category_prob,
                    model_set=r.model_set,
                )
                for r in rows
            )
    except IntegrityError:  # created concurrently under the same slug
        with db.session() as session:
            existing = session.scalar(select(Experiment).where(Experiment.slug == slug))
            assert existing is not None
            return _same_or_refuse(existing, digest, raw_config, plan), load_design(session, existing), False
    return exp, design, True


def _same_or_refuse(existing: Experiment, digest: str, raw_config: Mapping[str, Any],
                    plan: Mapping[str, str] | None) -> Experiment:
    if existing.set_hash != digest:
        raise InputFileExists(
            f"experiment {existing.slug!r} already exists with a different stimulus set; choose another --name"
        )
    if existing.settings.get("config") != jsonable(dict(raw_config)):
        raise InputFileExists(
            f"experiment {existing.slug!r} already exists with a different configuration; choose another --name"
        )
    stored = (existing.settings.get("analysis_plan") or {}).get("sha256")
    if stored != (plan or {}).get("sha256"):
        raise InputFileExists(
            f"experiment {existing.slug!r} already exists with a different analysis plan (stored: "
            f"{(stored or 'none')[:12]}); a plan cannot change after creation: choose another --name"
        )
    return existing


_DESIGNS: dict[tuple[str, int, str, str], Design] = {}
_DESIGNS_LOCK = threading.Lock()


def load_design(session: Session, exp: Experiment) -> Design:
    """The experiment's design, rebuilt from its stored stimuli (cached: experiments never change)."""
    key = (str(session.get_bind().url), exp.id, exp.set_hash, json.dumps(exp.settings["design"], sort_keys=True))
    with _DESIGNS_LOCK:
        cached = _DESIGNS.get(key)
    if cached is not None:
        return cached
    rows = [
        StimulusRow(
            stimulus_id=s.stimulus_id, source=s.source, source_sha256=s.source_sha256, condition=s.condition,
            pair=s.pair, target=s.target, eps=s.eps, pair_key=s.pair_key, ensemble_category=s.ensemble_category,
            ensemble_category_prob=s.ensemble_category_prob, model_set=s.model_set,
        )
        for s in session.scalars(select(Stimulus).where(Stimulus.experiment_id == exp.id))
    ]
    design = Design(rows, design_config_from_settings(exp.settings))
    with _DESIGNS_LOCK:
        _DESIGNS[key] = design
    return design


def find_experiment(db: Database, slug: str) -> Experiment:
    """The experiment named ``slug`` (detached: its columns stay readable); raises NotFound."""
    with db.session() as session:
        return get_experiment(session, slug)


def get_experiment(session: Session, slug: str) -> Experiment:
    exp = session.scalar(select(Experiment).where(Experiment.slug == slug)) if SLUG_RE.fullmatch(slug or "") else None
    if exp is None:
        raise NotFound(f"no experiment named {slug!r}")
    return exp


def counts_toward_list(exp: Experiment, now: datetime | None = None) -> ColumnElement[bool]:
    """Which participants fill their list's slot.

    Completed ones always; ``in_progress`` ones only until the experiment's
    ``timeout_minutes`` after their start (an abandoned session frees its slot; the
    participant may still finish, and then counts again); screened-out ones only if
    the experiment's ``screened_out_frees_slot`` is off; previews and voided ones never.
    """
    settings = exp.settings
    cutoff = (now or utcnow()) - timedelta(minutes=int(settings.get("timeout_minutes") or 90))
    rule = or_(
        Participant.status == "completed",
        and_(Participant.status == "in_progress", Participant.created_at > cutoff),
    )
    if not settings.get("screened_out_frees_slot", True):
        rule = or_(rule, Participant.status == "screened_out")
    # Rehearsals (preview links) and participants the researcher voided never hold a slot.
    return and_(rule, Participant.preview.is_(False), Participant.voided_at.is_(None))


def list_counts(session: Session, exp: Experiment) -> list[int]:
    """Participants per list who fill a slot (:func:`counts_toward_list`)."""
    counts = [0] * exp.n_lists
    rows = session.execute(
        select(Participant.list_index, func.count())
        .where(Participant.experiment_id == exp.id, counts_toward_list(exp))
        .group_by(Participant.list_index)
    )
    for list_index, n in rows:
        counts[list_index] = n
    return counts


