"""Bias against chance, one family of tests: per participant means, t and bootstrap intervals, t, Wilcoxon, BF10.

``bias_by_eps.csv`` (condition x budget, Holm over the budgets of a condition) and
``bias_by_condition.csv`` (all budgets together). Formulas in ``docs/analysis.md``.
"""
from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .common import cohen_d_ci, holm, main_trials, sort_table, t_interval
from .config import AnalysisConfig

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: The columns ``bias_by_eps.csv`` starts with, in this order (issue contract).
BIAS_BY_EPS_COLUMNS = ("condition", "eps", "n_participants", "n_trials", "bias", "ci_low", "ci_high",
                       "t", "dof", "p", "p_holm", "cohen_d", "bf10")


def participant_means(df: "pd.DataFrame", by: Sequence[str] = ("condition", "eps")) -> "pd.DataFrame":
    """Per participant x condition x eps: ``n_trials`` and ``bias`` (mean of ``chose_question_target``)."""
    main = main_trials(df)
    keys = ["participant", *by]
    out = (main.groupby(keys, sort=False, observed=True)["chose_question_target"]
           .agg(n_trials="size", bias="mean").reset_index())
    out["bias"] = out["bias"].astype(float)
    return sort_table(out, [k for k in ("condition", "eps", "participant") if k in keys])

def _bootstrap_ci(values: np.ndarray, level: float, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    n = len(values)
    if n < 2 or n_boot <= 0:
        return math.nan, math.nan
    means = values[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    low, high = np.quantile(means, [0.5 - level / 2.0, 0.5 + level / 2.0])
    return float(low), float(high)


def _summarise_means(means: "pd.DataFrame", keys: list[str], value: str, level: float,
                     n_boot: int, seed: int) -> "pd.DataFrame":
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for key, group in means.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        values = group[value].to_numpy(dtype=float)
        mean, sd, low, high = t_interval(values, level)
        boot_low, boot_high = _bootstrap_ci(values, level, n_boot, rng)
        rows.append({**dict(zip(keys, key)), "n_participants": len(values),
                     "n_trials": int(group["n_trials"].sum()), value: mean, "ci_low": low, "ci_high": high,
                     "sd": sd, "sem": sd / math.sqrt(len(values)) if len(values) > 1 else math.nan,
                     "boot_ci_low": boot_low, "boot_ci_high": boot_high})
    return sort_table(pd.DataFrame(rows), keys)


def perceptual_bias(df: "pd.DataFrame", ci_level: float = 0.95, n_boot: int = 2000, seed: int = 0,
                    by: Sequence[str] = ("condition", "eps")) -> "pd.DataFrame":
    """Group perceptual bias per condition x eps: the mean of participant means with CIs.

    Columns: ``condition, eps, n_participants, n_trials, bias, ci_low, ci_high``
    (Student-t interval), ``sd, sem`` (of participant means), ``boot_ci_low,
    boot_ci_high`` (percentile bootstrap over participants, ``n_boot`` resamples,
    seeded) and ``pooled_bias`` (all trials pooled, for reference).
    """
    means = participant_means(df, by)
    out = _summarise_means(means, list(by), "bias", ci_level, n_boot, seed)
    main = main_trials(df)
    pooled = main.groupby(list(by))["chose_question_target"].mean().rename("pooled_bias").reset_index()
    return out.merge(pooled, on=list(by), how="left")

def one_sample_tests(values: np.ndarray, chance: float = 0.5, level: float = 0.95) -> dict[str, float]:
    """t-test (pingouin: t, dof, p, Cohen's d with its exact ``level`` CI, JZS BF10) and Wilcoxon signed-rank."""
    import pingouin as pg
    from scipy import stats

    values = np.asarray(values, dtype=float)
    n = len(values)
    out = {"t": math.nan, "dof": math.nan, "p": math.nan, "cohen_d": math.nan, "bf10": math.nan,
           "wilcoxon_w": math.nan, "wilcoxon_p": math.nan, "cohen_d_ci_low": math.nan, "cohen_d_ci_high": math.nan}
    if n < 2:
        return out
    out["dof"] = float(n - 1)
    if np.std(values, ddof=1) == 0:
        return out  # no variability: the t statistic is undefined
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pg.ttest(values, chance)
    row = res.iloc[0]
    # BF10 recomputed from t (pingouin's table rounds it to four digits).
    out.update(t=float(row["T"]), dof=float(row["dof"]), p=float(row["p_val"]),
               cohen_d=float((values.mean() - chance) / values.std(ddof=1)),
               bf10=float(pg.bayesfactor_ttest(float(row["T"]), n)))
    out["cohen_d_ci_low"], out["cohen_d_ci_high"] = cohen_d_ci(out["t"], n, level)
    differences = values - chance
    if np.any(differences != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = stats.wilcoxon(differences, zero_method="wilcox")
        out.update(wilcoxon_w=float(w.statistic), wilcoxon_p=float(w.pvalue))
    return out


def ttests(df: "pd.DataFrame", chance: float = 0.5, by: Sequence[str] = ("condition", "eps"),
           level: float = 0.95) -> "pd.DataFrame":
    """One-sample tests of participant means against ``chance`` per condition x eps.

    Columns: ``condition, eps, n_participants, t, dof, p, p_holm, cohen_d, bf10,
    wilcoxon_w, wilcoxon_p, wilcoxon_p_holm``. Holm's correction runs over the
    budgets within each condition. Cohen's d is ``(mean - chance) / sd``.
    """
    import pandas as pd

    means = participant_means(df, by)
    rows = []
    for key, group in means.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "n_participants": len(group),
                     **one_sample_tests(group["bias"].to_numpy(), chance, level)})
    out = sort_table(pd.DataFrame(rows), list(by))
    family = [k for k in by if k != "eps"]
    for column in ("p", "wilcoxon_p"):
        adjusted = np.full(len(out), np.nan)
        groups = out.groupby(family, sort=False).indices.values() if family else [np.arange(len(out))]
        for index in groups:
            adjusted[index] = holm(out[column].to_numpy()[index])
        out.insert(out.columns.get_loc(column) + 1, f"{column}_holm", adjusted)
    return out


def bias_by_eps(df: "pd.DataFrame", config: AnalysisConfig | None = None) -> "pd.DataFrame":
    """The main table (``bias_by_eps.csv``): :func:`perceptual_bias` joined with :func:`ttests`."""
    config = config or AnalysisConfig()
    bias = perceptual_bias(df, config.ci_level, config.n_boot, config.seed)
    tests = ttests(df, config.chance, level=config.ci_level).drop(columns="n_participants")
    out = bias.merge(tests, on=["condition", "eps"], how="left")
    rest = [c for c in out.columns if c not in BIAS_BY_EPS_COLUMNS]
    return out[list(BIAS_BY_EPS_COLUMNS) + rest]


def bias_by_condition(df: "pd.DataFrame", config: AnalysisConfig | None = None) -> "pd.DataFrame":
    """Bias per condition over all budgets: participant means over every main trial of the condition."""
    config = config or AnalysisConfig()
    bias = perceptual_bias(df, config.ci_level, config.n_boot, config.seed, by=("condition",))
    tests = ttests(df, config.chance, by=("condition",), level=config.ci_level).drop(columns=["n_participants", "p_holm",
                                                                       "wilcoxon_p_holm"])
    out = bias.merge(tests, on="condition", how="left")
    first = [c for c in BIAS_BY_EPS_COLUMNS if c in out.columns and c != "p_holm"]
    return out[first + [c for c in out.columns if c not in first]]
