"""Helpers every family of tests shares: main-trial selection, table order, Holm, t and effect-size intervals.

One home for each rule, so that the bias tests, the contrasts, the item tables and the
primary analysis compute them the same way, and so that no statistics module needs
another one's internals (no import cycles).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from advbias.errors import InputError
from advbias.trials import MAIN_TRIAL_TYPES

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: Report order of the trial types (anything else sorts last).
CONDITION_ORDER = {name: i for i, name in enumerate(MAIN_TRIAL_TYPES)}


def main_trials(df: "pd.DataFrame") -> "pd.DataFrame":
    """The trials that count for bias: ``kind == "main"`` and not catch; an error if there are none."""
    main = df[(df["kind"] == "main") & (df["condition"] != "catch")]
    if main.empty:
        raise InputError("no main trials to analyse (all excluded, or the export holds only practice/catch trials)")
    return main


def sort_table(frame: "pd.DataFrame", by: Sequence[str] = ("condition", "eps")) -> "pd.DataFrame":
    """Sort a result table by ``by``, trial types in report order rather than alphabetically."""
    keys = list(by)
    if "condition" in keys and "condition" in frame.columns:
        frame = frame.assign(_order=frame["condition"].map(CONDITION_ORDER).fillna(99))
        keys = ["_order" if k == "condition" else k for k in keys]
        return frame.sort_values(keys, kind="stable").drop(columns="_order").reset_index(drop=True)
    keys = [k for k in keys if k in frame.columns]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True) if keys else frame.reset_index(drop=True)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values; NaNs are left out of the family."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def t_interval(values: np.ndarray, level: float) -> tuple[float, float, float, float]:
    """(mean, sd, low, high) of a Student-t interval for the mean; NaN limits below two values."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(np.mean(values))
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(np.std(values, ddof=1))
    half = stats.t.ppf(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def cohen_d_ci(t: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact CI of a one-sample (or paired) Cohen's d = t / sqrt(n), by inverting the noncentral t.

    The limits are the noncentrality parameters whose noncentral t distribution
    (n - 1 degrees of freedom) puts ``t`` at its upper and lower ``(1 - level) / 2``
    quantile, divided by ``sqrt(n)`` (Steiger & Fouladi 1997).
    """
    from scipy import optimize, stats

    if n < 2 or not np.isfinite(t):
        return math.nan, math.nan
    df, tail = n - 1, (1.0 - level) / 2.0

    def solve(target: float) -> float:
        # cdf(t; nc) falls as nc grows: widen a bracket around t until it holds the root.
        f = lambda nc: float(stats.nct.cdf(t, df, nc)) - target  # noqa: E731
        lo, hi, width = t - 1.0, t + 1.0, 1.0
        for _ in range(40):
            f_lo, f_hi = f(lo), f(hi)
            if not (np.isfinite(f_lo) and np.isfinite(f_hi)):
                return math.nan
            if f_lo >= 0 >= f_hi:
                return float(optimize.brentq(f, lo, hi, xtol=1e-10))
            width *= 2.0
            lo, hi = (lo - width, hi) if f_lo < 0 else (lo, hi + width)
        return math.nan

    return solve(1.0 - tail) / math.sqrt(n), solve(tail) / math.sqrt(n)


def wilson_ci(successes: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion, from counts (good coverage at a few trials).

    Exactly 0 (1) at the lower (upper) end when every answer is a failure (success),
    so that an estimate ``successes / n`` always lies inside its interval.
    """
    from scipy import stats

    z = stats.norm.ppf(0.5 + level / 2.0)
    n = np.asarray(n, dtype=float)
    k = np.asarray(successes, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        low = np.where(k <= 0, 0.0, np.clip(centre - half, 0.0, 1.0))
        high = np.where(k >= n, 1.0, np.clip(centre + half, 0.0, 1.0))
    return np.minimum(low, np.where(np.isfinite(p), p, low)), np.maximum(high, np.where(np.isfinite(p), p, high))
