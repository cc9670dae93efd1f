"""Preregistration: the analysis plan stored with the experiment, checked and compared with the settings used.

``advbias experiment create --analysis analysis.toml`` stores the plan's text, its
sha256 and the time it was stored, before any answer exists; the export's sidecar
carries it with the time of the first answer. ``advbias analyze`` then uses the plan
by default and says so; given another ``--config`` it labels the analysis
exploratory and lists each setting that deviates; without a stored plan it says the
analysis was not preregistered. Nothing here trusts the record blindly: the text
must hash to the stored sha256 and the plan must predate the first answer.
"""
from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from .config import AnalysisConfig, as_config, config_from_dict

PREREGISTERED, EXPLORATORY, NOT_PREREGISTERED = "preregistered", "exploratory", "not preregistered"


@dataclass
class Registration:
    """What the report says about when the analysis was fixed."""

    status: str
    stored_at: str | None = None
    sha256: str | None = None
    first_answer_at: str | None = None
    deviations: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def sentence(self) -> str:
        """One paragraph for the report's primary section and the Methods."""
        if self.status == NOT_PREREGISTERED:
            return ("Not preregistered: no analysis plan was stored with the experiment (advbias experiment create "
                    "--analysis), so nothing records when these settings were fixed.")
        when = (f"preregistered at {self.stored_at} (sha256 {self.sha256}), first answer at "
                f"{self.first_answer_at or 'none yet'}")
        text = (f"The analysis plan was {when}. " + (
            "The analysis follows the stored plan." if self.status == PREREGISTERED else
            f"Exploratory: this analysis deviates from the plan in {len(self.deviations)} setting(s): "
            + "; ".join(self.deviations) + "."))
        if self.problems:
            text += " Warning: " + "; ".join(self.problems) + "."
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "stored_at": self.stored_at, "sha256": self.sha256,
                "first_answer_at": self.first_answer_at, "deviations": self.deviations, "problems": self.problems}


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        out.update(_flat(value, f"{name}.") if isinstance(value, Mapping) else {name: value})
    return out


def deviations(planned: AnalysisConfig, used: AnalysisConfig) -> list[str]:
    """``"exclusions.min_rt_ms: planned 150, used 200"`` for every setting that differs."""
    a, b = _flat(planned.to_dict()), _flat(used.to_dict())
    return [f"{key}: planned {a[key]!r}, used {b[key]!r}" for key in sorted(a) if a[key] != b.get(key)]


def _moment(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def _check(plan: Mapping[str, Any], first_answer_at: str | None) -> list[str]:
    problems = []
    if hashlib.sha256(str(plan["text"]).encode("utf-8")).hexdigest() != plan["sha256"]:
        problems.append("the stored plan's text does not match its sha256 (it was edited after it was stored)")
    stored, first = _moment(plan["stored_at"]), _moment(first_answer_at)
    if stored is None:
        problems.append(f"the plan's storage time {plan['stored_at']!r} is not a time")
    elif first is not None and stored > first:
        problems.append("the plan was stored after the first answer, so it is not a preregistration")
    return problems


def resolve(sidecar: Mapping[str, Any] | None,
            config: AnalysisConfig | Mapping[str, Any] | str | Path | None) -> tuple[AnalysisConfig, Registration]:
    """The settings to analyse with, and the registration statement for the report."""
    plan = (sidecar or {}).get("analysis_plan")
    if not plan:
        return as_config(config), Registration(NOT_PREREGISTERED)
    first = (sidecar or {}).get("first_answer_at")
    base = {"stored_at": plan["stored_at"], "sha256": plan["sha256"], "first_answer_at": first}
    problems = _check(plan, first)
    try:
        planned = config_from_dict(tomllib.loads(plan["text"]))
    except (tomllib.TOMLDecodeError, TypeError, ValueError) as exc:
        problems.append(f"the stored plan is not valid analysis settings ({exc}); the given or default settings "
                        "were used")
        return as_config(config), Registration(EXPLORATORY, problems=problems, **base)
    if config is None:
        return planned, Registration(EXPLORATORY if problems else PREREGISTERED, problems=problems, **base)
    used = as_config(config)
    changed = deviations(planned, used)
    status = EXPLORATORY if changed or problems else PREREGISTERED
    return used, Registration(status, deviations=changed, problems=problems, **base)
