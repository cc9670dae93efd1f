"""What the admin pages and ``advbias experiment list`` show: counts, progress, live bias.

Read-only queries (plus opening and closing an experiment), kept out of the views so
that the pages only translate requests into calls and results into HTML.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from experiment.db import Database
from experiment.errors import NotFound
from experiment.models import Experiment, Participant, Response, Trial
from experiment.responses import median, screen_flags
from experiment.study import get_experiment


def overview(db: Database) -> tuple[list[Experiment], dict[int, dict[str, int]]]:
    """Every experiment (oldest first) and its participants per status."""
    with db.session() as s:
        experiments = list(s.scalars(select(Experiment).order_by(Experiment.created_at)).all())
        counts: dict[int, dict[str, int]] = {}
        for exp_id, status, n in s.execute(
            select(Participant.experiment_id, Participant.status, func.count()).group_by(
                Participant.experiment_id, Participant.status
            )
        ):
            counts.setdefault(exp_id, {})[status] = n
    return experiments, counts


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of k successes in n: honest at small n and near 0 or 1 (unlike p +- z*se)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def _proportions(s: Session, exp: Experiment, kind: str) -> list[dict[str, Any]]:
    """Share of ``kind`` trials whose chosen side showed the asked category, per condition and budget."""
    chose = case((Response.response == Trial.target_side, 1), else_=0)
    rows = s.execute(
        select(Trial.condition, Trial.eps, func.count(), func.sum(chose))
        .join(Response, Response.trial_id == Trial.id)
        .join(Participant, Participant.id == Trial.participant_id)
        .where(Participant.experiment_id == exp.id, Trial.kind == kind, Participant.preview.is_(False),
               Participant.voided_at.is_(None))
        .group_by(Trial.condition, Trial.eps)
        .order_by(Trial.condition, Trial.eps)
    )
    out = []
    for condition, eps, n, k in rows:
        low, high = wilson(int(k or 0), int(n))
        out.append({"condition": condition, "eps": eps, "n": n, "k": int(k or 0), "p": (k or 0) / n,
                    "low": low, "high": high})
    return out


def bias_rows(s: Session, exp: Experiment) -> list[dict[str, Any]]:
    """Proportion of main-trial choices of the image perturbed toward the asked category, per condition and budget."""
    return _proportions(s, exp, "main")


def catch_accuracy(s: Session, exp: Experiment) -> dict[str, Any]:
    """Catch trials answered correctly, over everyone counted (an attention measure, not a bias)."""
    rows = _proportions(s, exp, "catch")
    n, k = sum(r["n"] for r in rows), sum(r["k"] for r in rows)
    low, high = wilson(k, n)
    return {"n": n, "k": k, "p": k / n if n else None, "low": low, "high": high}


@dataclass
class Screening:
    """One participant's careless-responding measures, and the flags the finish rule raises (or would)."""

    median_rt_ms: float | None = None
    median_server_rt_ms: float | None = None
    catch_failures: int = 0
    ignored_keys: int = 0
    fullscreen_exits: int = 0
    flags: list[str] = field(default_factory=list)


def screening(s: Session, exp: Experiment) -> dict[int, Screening]:
    """Per participant id: median rt_ms of main trials, catch failures, ignored keys, exits and flags."""
    rows: dict[int, list[Any]] = {}
    for row in s.execute(
        select(Response.participant_id, Trial.kind, Trial.target_side, Response.response, Response.rt_ms,
               Response.server_rt_ms, Response.ignored_keys, Response.fullscreen_exits)
        .join(Trial, Trial.id == Response.trial_id)
        .join(Participant, Participant.id == Response.participant_id)
        .where(Participant.experiment_id == exp.id)
    ):
        rows.setdefault(row.participant_id, []).append(row)
    out = {}
    for pid, answers in rows.items():
        scored = [a for a in answers if a.kind != "practice"]
        item = Screening(
            median_rt_ms=median([a.rt_ms for a in scored if a.kind == "main"]),
            median_server_rt_ms=median([a.server_rt_ms for a in scored if a.server_rt_ms is not None]),
            catch_failures=sum(a.kind == "catch" and a.response != a.target_side for a in answers),
            ignored_keys=sum(a.ignored_keys or 0 for a in answers),
            fullscreen_exits=max((a.fullscreen_exits or 0 for a in answers), default=0),
        )
        item.flags = screen_flags(exp.settings, item.catch_failures, item.median_rt_ms, item.median_server_rt_ms)
        out[pid] = item
    return out


@dataclass
class ExperimentReport:
    """Everything the admin's experiment page shows."""

    exp: Experiment
    participants: list[Participant]
    by_status: dict[str, int] = field(default_factory=dict)
    per_list: dict[int, dict[str, int]] = field(default_factory=dict)
    per_condition: list[tuple[str, str, int]] = field(default_factory=list)
    bias: list[dict[str, Any]] = field(default_factory=list)
    catch: dict[str, Any] = field(default_factory=dict)
    #: Per participant id: median rt_ms, catch failures, ignored keys, fullscreen exits, screen-out flags.
    screening: dict[int, Screening] = field(default_factory=dict)


def experiment_report(db: Database, slug: str) -> ExperimentReport:
    """Progress, per-list counts, answers per condition and the live bias of experiment ``slug``."""
    with db.session() as s:
        exp = get_experiment(s, slug)
        report = ExperimentReport(exp, list(s.scalars(
            select(Participant).where(Participant.experiment_id == exp.id).order_by(Participant.created_at.desc())
        ).all()))
        report.per_list = {i: {} for i in range(exp.n_lists)}
        for p in report.participants:
            status = "preview" if p.preview else "void" if p.voided_at is not None else p.status
            report.by_status[status] = report.by_status.get(status, 0) + 1
            report.per_list[p.list_index][status] = report.per_list[p.list_index].get(status, 0) + 1
        report.per_condition = [tuple(r) for r in s.execute(  # type: ignore[misc]
            select(Trial.kind, Trial.condition, func.count())
            .join(Response, Response.trial_id == Trial.id)
            .join(Participant, Participant.id == Trial.participant_id)
            .where(Participant.experiment_id == exp.id)
            .group_by(Trial.kind, Trial.condition)
            .order_by(Trial.kind, Trial.condition)
        ).all()]
        report.bias = bias_rows(s, exp)
        report.catch = catch_accuracy(s, exp)
        report.screening = screening(s, exp)
    return report


@dataclass
class ParticipantDetail:
    """One participant for the admin's detail page: the record, its screening and every answer."""

    exp: Experiment
    participant: Participant
    screening: Screening
    answers: list[dict[str, Any]]


def participant_detail(db: Database, slug: str, public_id: str) -> ParticipantDetail:
    """The participant ``public_id`` of experiment ``slug``; raises NotFound."""
    with db.session() as s:
        exp = get_experiment(s, slug)
        part = s.scalar(select(Participant).where(Participant.experiment_id == exp.id,
                                                  Participant.public_id == public_id))
        if part is None:
            raise NotFound(f"no participant {public_id!r} in experiment {slug!r}")
        answers = [
            {"index": t.index, "kind": t.kind, "condition": t.condition, "eps": t.eps, "response": r.response,
             "correct": r.response == t.target_side, "rt_ms": r.rt_ms, "server_rt_ms": r.server_rt_ms,
             "ignored_keys": r.ignored_keys, "fullscreen": r.fullscreen, "fullscreen_exits": r.fullscreen_exits,
             "window": f"{r.window_width}x{r.window_height}" if r.window_width else "",
             "image_px": r.image_px}
            for t, r in s.execute(select(Trial, Response).join(Response, Response.trial_id == Trial.id)
                                  .where(Trial.participant_id == part.id).order_by(Trial.index))
        ]
        item = screening(s, exp).get(part.id, Screening())
    return ParticipantDetail(exp, part, item, answers)


def set_active(db: Database, slug: str, active: bool) -> None:
    """Open (True) or close (False) an experiment to new participants; raises NotFound."""
    with db.write() as s:
        get_experiment(s, slug).active = active


def participant_counts(db: Database) -> tuple[list[Experiment], dict[int, int]]:
    """Every experiment and its number of participants (for ``advbias experiment list``)."""
    experiments, per_status = overview(db)
    return experiments, {exp_id: sum(c.values()) for exp_id, c in per_status.items()}
