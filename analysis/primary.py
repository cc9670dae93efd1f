"""The declared primary analysis (``primary.csv``), reported first.

``analysis.toml`` names it before the data are seen (``[analysis] primary``): by
default the mixed model's intercept per trial type, ``y ~ 1 + (1|participant) +
(1|source)``, which generalises over participants *and* images, its Wald statistic
referred to a t distribution on ``min(participants, images) - 1`` degrees of freedom
(measured to hold the nominal coverage better than the normal reference); or the one-sample
t-test of participant means, which treats the images as fixed. The family is the
overall bias of every trial type in the export, Holm-adjusted together; ``alternative
= "greater"`` makes each test one-sided (bias above chance) with a one-sided interval.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from .common import holm
from .config import AnalysisConfig

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

PRIMARY_COLUMNS = ("condition", "test", "alternative", "estimate", "ci_low", "ci_high", "scale", "statistic", "dof",
                   "p", "p_holm", "bias", "bias_ci_low", "bias_ci_high", "n_participants", "note")
_TESTS = {"mixed_model": "GLMM intercept (participants and images random), Wald t",
          "ttest": "one-sample t-test of participant means"}


def _expit(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if np.isfinite(x) else (1.0 if x > 0 else 0.0)


def _interval(est: float, se: float, dist: Any, level: float, one_sided: bool) -> tuple[float, float, float]:
    """(statistic, low, high) for ``est`` with standard error ``se`` under ``dist`` (norm or t)."""
    if one_sided:
        return est / se, est - dist.ppf(level) * se, math.inf
    half = dist.ppf(0.5 + level / 2.0) * se
    return est / se, est - half, est + half


def _glmm_rows(mixed: "pd.DataFrame", config: AnalysisConfig) -> list[dict[str, Any]]:
    one_sided = config.alternative == "greater"
    fixed = mixed[(mixed["model"] == "intercept") & (mixed["effect"] == "fixed")]
    rows = []
    for r in fixed.itertuples(index=False):
        # A t reference on (fewer of participants and images) - 1 degrees of freedom: the intercept is a
        # between-cluster effect, known no better than its scarcer grouping factor allows (docs/benchmarks.md:
        # the z interval covered 93.0-93.5% with 50 images, this one 93.2-94.8%, 400 studies each).
        dof = float(max(min(r.n_participants, r.n_images) - 1, 1))
        base = {"condition": r.condition, "test": _TESTS["mixed_model"], "scale": "log-odds", "dof": dof,
                "n_participants": r.n_participants, "note": getattr(r, "note", None)}
        if not np.isfinite(r.std_err) or r.std_err <= 0:
            rows.append({**base, "estimate": r.estimate})
            continue
        z, low, high = _interval(r.estimate, r.std_err, stats.t(dof), config.ci_level, one_sided)
        p = stats.t.sf(z, dof) if one_sided else 2 * stats.t.sf(abs(z), dof)
        rows.append({**base, "estimate": r.estimate, "ci_low": low, "ci_high": high, "statistic": z, "p": float(p),
                     "bias": _expit(r.estimate), "bias_ci_low": _expit(low), "bias_ci_high": _expit(high)})
    return rows


def _ttest_rows(by_condition: "pd.DataFrame", config: AnalysisConfig) -> list[dict[str, Any]]:
    one_sided = config.alternative == "greater"
    rows = []
    for r in by_condition.itertuples(index=False):
        base = {"condition": r.condition, "test": _TESTS["ttest"], "scale": "probability",
                "n_participants": r.n_participants, "estimate": r.bias - config.chance}
        if r.n_participants < 2 or not r.sd > 0:
            rows.append(base)
            continue
        dof = r.n_participants - 1
        se = r.sd / math.sqrt(r.n_participants)
        t, low, high = _interval(base["estimate"], se, stats.t(dof), config.ci_level, one_sided)
        p = stats.t.sf(t, dof) if one_sided else 2 * stats.t.sf(abs(t), dof)
        rows.append({**base, "ci_low": low, "ci_high": high, "statistic": t, "dof": float(dof), "p": float(p),
                     "bias": r.bias, "bias_ci_low": low + config.chance, "bias_ci_high": high + config.chance})
    return rows


def primary_analysis(tables: dict[str, "pd.DataFrame"], config: AnalysisConfig) -> "pd.DataFrame":
    """The declared family: overall bias of each trial type by the declared test, Holm over the family.

    ``estimate`` is the log-odds (mixed model: for a typical participant and image) or
    the difference from chance of the mean of participant means (t-test); ``bias`` is
    the same on the probability scale. Falls back to the t-test, with a note, when the
    mixed models were switched off.
    """
    import pandas as pd

    use_glmm = config.primary == "mixed_model" and "mixed_model" in tables
    rows = _glmm_rows(tables["mixed_model"], config) if use_glmm else _ttest_rows(tables["bias_by_condition"], config)
    out = pd.DataFrame(rows, columns=list(PRIMARY_COLUMNS))
    out["alternative"] = config.alternative
    out["p_holm"] = holm(out["p"].to_numpy(float))
    if config.primary == "mixed_model" and not use_glmm:
        out["note"] = "mixed models switched off ([analysis] mixed_model = false): the t-test is reported"
    return out
