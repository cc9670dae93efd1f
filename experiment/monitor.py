"""What the admin pages and ``advbias experiment list`` show: counts, progress, live bias.

Read-only queries (plus opening and closing an experiment), kept out of the views so
that the pages only translate requests into calls and results into HTML.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from experiment.db import Database
from experiment.models import Experiment, Participant, Response, Trial
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


def bias_rows(s: Session, exp: Experiment) -> list[dict[str, Any]]:
    """Proportion of main-trial choices of the image perturbed toward the asked category, per condition and budget."""
    chose = case((Response.response == Trial.target_side, 1), else_=0)
    rows = s.execute(
        select(Trial.condition, Trial.eps, func.count(), func.sum(chose))
        .join(Response, Response.trial_id == Trial.id)
        .join(Participant, Participant.id == Trial.participant_id)
        .where(Participant.experiment_id == exp.id, Trial.kind.in_(("main", "catch")))
        .group_by(Trial.condition, Trial.eps)
        .order_by(Trial.condition, Trial.eps)
    )
    out = []
    for condition, eps, n, k in rows:
        p = (k or 0) / n
        half = 1.96 * math.sqrt(max(p * (1 - p), 1e-12) / n)
        out.append({"condition": condition, "eps": eps, "n": n, "p": p, "low": max(0.0, p - half),
                    "high": min(1.0, p + half)})
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
    #: Median server-side time per main trial (ms), per participant id: low values mean a scripted client.
    median_server_rt: dict[int, float] = field(default_factory=dict)


def _median_server_rt(s: Session, exp: Experiment) -> dict[int, float]:
    per: dict[int, list[float]] = {}
    for pid, value in s.execute(
        select(Response.participant_id, Response.server_rt_ms)
        .join(Trial, Trial.id == Response.trial_id)
        .join(Participant, Participant.id == Response.participant_id)
        .where(Participant.experiment_id == exp.id, Trial.kind != "practice", Response.server_rt_ms.is_not(None))
    ):
        per.setdefault(pid, []).append(value)
    return {pid: statistics.median(values) for pid, values in per.items()}


def experiment_report(db: Database, slug: str) -> ExperimentReport:
    """Progress, per-list counts, answers per condition and the live bias of experiment ``slug``."""
    with db.session() as s:
        exp = get_experiment(s, slug)
        report = ExperimentReport(exp, list(s.scalars(
            select(Participant).where(Participant.experiment_id == exp.id).order_by(Participant.created_at.desc())
        ).all()))
        report.per_list = {i: {} for i in range(exp.n_lists)}
        for p in report.participants:
            report.by_status[p.status] = report.by_status.get(p.status, 0) + 1
            report.per_list[p.list_index][p.status] = report.per_list[p.list_index].get(p.status, 0) + 1
        report.per_condition = [tuple(r) for r in s.execute(  # type: ignore[misc]
            select(Trial.kind, Trial.condition, func.count())
            .join(Response, Response.trial_id == Trial.id)
            .join(Participant, Participant.id == Trial.participant_id)
            .where(Participant.experiment_id == exp.id)
            .group_by(Trial.kind, Trial.condition)
            .order_by(Trial.kind, Trial.condition)
        ).all()]
        report.bias = bias_rows(s, exp)
        report.median_server_rt = _median_server_rt(s, exp)
    return report


def set_active(db: Database, slug: str, active: bool) -> None:
    """Open (True) or close (False) an experiment to new participants; raises NotFound."""
    with db.write() as s:
        get_experiment(s, slug).active = active


def participant_counts(db: Database) -> tuple[list[Experiment], dict[int, int]]:
    """Every experiment and its number of participants (for ``advbias experiment list``)."""
    experiments, per_status = overview(db)
    return experiments, {exp_id: sum(c.values()) for exp_id, c in per_status.items()}
