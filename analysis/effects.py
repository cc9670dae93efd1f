"""Comparisons between trial types and over budgets: ``contrasts.csv`` and ``trend.csv``.

Testing each trial type against chance says the perturbation biases choices; the
paper's inference is stronger: the image perturbed toward a category is chosen more
than its controls (the flipped perturbation, noise of the same budget, the clean
photo), and more so as the budget grows. Formulas are in ``docs/analysis.md``.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from advbias.trials import MAIN_TRIAL_TYPES

from .common import cohen_d_ci, holm, main_trials
from .config import AnalysisConfig
from .glmm import fit_logistic_glmm

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: The trial types in report order; a contrast is always the earlier minus the later.
ORDER = MAIN_TRIAL_TYPES
CONTRAST_COLUMNS = ("condition", "baseline", "eps", "n_participants", "diff", "ci_low", "ci_high", "t", "dof", "p",
                    "p_holm", "method", "scale", "cohen_dz", "dz_ci_low", "dz_ci_high", "chi2", "chi2_df", "note")
TREND_COLUMNS = ("condition", "slope", "ci_low", "ci_high", "z", "p", "model", "n_participants", "n_eps",
                 "monotone", "n_decreases", "sd_slope", "note")


def _pairs(conditions: list[str]) -> list[tuple[str, str]]:
    present = [c for c in ORDER if c in conditions]
    return [(a, b) for i, a in enumerate(present) for b in present[i + 1:]]


def _paired_row(a: "pd.Series", b: "pd.Series", level: float) -> dict[str, Any]:
    """Paired t on participant means ``a - b`` (participants with both)."""
    both = a.index.intersection(b.index)
    diff = (a.loc[both] - b.loc[both]).to_numpy(float)
    n = len(diff)
    row: dict[str, Any] = {"n_participants": n, "method": "paired t", "scale": "probability"}
    if n < 2 or np.std(diff, ddof=1) == 0:
        return {**row, "diff": float(diff.mean()) if n else math.nan,
                "note": "fewer than two participants saw both trial types" if n < 2 else "no variability"}
    mean, se = float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(n))
    t = mean / se
    half = stats.t.ppf(0.5 + level / 2.0, n - 1) * se
    dz_low, dz_high = cohen_d_ci(t, n, level)
    return {**row, "diff": mean, "ci_low": mean - half, "ci_high": mean + half, "t": t, "dof": float(n - 1),
            "p": float(2.0 * stats.t.sf(abs(t), n - 1)), "cohen_dz": t / math.sqrt(n), "dz_ci_low": dz_low,
            "dz_ci_high": dz_high}


def _paired_contrasts(main: "pd.DataFrame", a: str, b: str, level: float) -> list[dict[str, Any]]:
    cells = main.groupby(["participant", "condition", "eps"], observed=True)["chose_question_target"].mean()
    pooled = main.groupby(["participant", "condition"], observed=True)["chose_question_target"].mean()
    rows = []
    levels = sorted(set(main.loc[main["condition"] == a, "eps"]) & set(main.loc[main["condition"] == b, "eps"]))
    for eps in levels:
        rows.append({"condition": a, "baseline": b, "eps": str(int(eps)),
                     **_paired_row(cells.xs((a, eps), level=(1, 2)), cells.xs((b, eps), level=(1, 2)), level)})
    adjusted = holm(np.array([r.get("p", math.nan) for r in rows]))
    for row, p in zip(rows, adjusted):
        row["p_holm"] = p
    rows.append({"condition": a, "baseline": b, "eps": "all",
                 **_paired_row(pooled.xs(a, level=1), pooled.xs(b, level=1), level)})
    return rows


def _glmm_contrasts(main: "pd.DataFrame", a: str, b: str, config: AnalysisConfig) -> list[dict[str, Any]]:
    """Cell-means GLMM of both trial types: log-odds differences per budget, pooled, and the interaction."""
    data = main[main["condition"].isin((a, b))]
    agg = (data.groupby(["participant", "source", "condition", "eps"], observed=True)["chose_question_target"]
           .agg(y="sum", n="size").reset_index())
    levels = sorted(set(agg.loc[agg["condition"] == a, "eps"]) & set(agg.loc[agg["condition"] == b, "eps"]))
    agg = agg[agg["eps"].isin(levels)]
    cells = [(c, e) for c in (a, b) for e in levels]
    X = np.stack([((agg["condition"] == c) & (agg["eps"] == e)).to_numpy(float) for c, e in cells], axis=1)
    base = {"condition": a, "baseline": b, "method": "glmm", "scale": "log-odds",
            "n_participants": int(agg["participant"].nunique())}
    try:
        fit = fit_logistic_glmm(agg["y"].to_numpy(float), X, {"participant": agg["participant"].to_numpy(),
                                                              "source": agg["source"].to_numpy()},
                                [f"{c}:{e}" for c, e in cells], trials=agg["n"].to_numpy(float), nagq=config.nagq)
    except ValueError as exc:
        return [{**base, "eps": "all", "note": f"not estimable: {exc}"}]
    k = len(levels)
    L = np.hstack([np.eye(k), -np.eye(k)])  # per-budget differences a - b
    rows = [{**base, "eps": str(int(e)), **_wald(L[i], fit, config.ci_level)} for i, e in enumerate(levels)]
    for row, p in zip(rows, holm(np.array([r["p"] for r in rows]))):
        row["p_holm"] = p
    rows.append({**base, "eps": "all", **_wald(L.mean(axis=0), fit, config.ci_level)})
    if k > 1:
        D = (L[1:] - L[0])  # the difference at each budget minus at the first: all zero without interaction
        diff = D @ fit.beta
        chi2 = float(diff @ np.linalg.solve(D @ fit.cov @ D.T, diff))
        rows.append({**base, "eps": "interaction", "chi2": chi2, "chi2_df": k - 1,
                     "p": float(stats.chi2.sf(chi2, k - 1)),
                     "note": "Wald test that the difference is the same at every budget (condition x budget)"})
    if fit.penalized:
        for row in rows:
            row["note"] = ((row.get("note") or "") + " penalised term(s): " + ", ".join(fit.penalized)).strip()
    return rows


def _wald(weights: np.ndarray, fit: Any, level: float) -> dict[str, float]:
    est = float(weights @ fit.beta)
    se = float(math.sqrt(max(weights @ fit.cov @ weights, 0.0)))
    z = est / se if se > 0 else math.nan
    half = stats.norm.ppf(0.5 + level / 2.0) * se
    return {"diff": est, "ci_low": est - half, "ci_high": est + half, "t": z, "dof": math.inf,
            "p": float(2.0 * stats.norm.sf(abs(z))) if se > 0 else math.nan}


def contrasts(df: "pd.DataFrame", config: AnalysisConfig | None = None) -> "pd.DataFrame":
    """Every pair of trial types present, earlier minus later in ``targets, vs_clean, vs_flip, vs_noise, vs_phase``.

    ``paired t`` rows: per budget and over all budgets (``eps = "all"``), the mean over
    participants of the difference of their means, with a t-CI, a paired t-test,
    Cohen's d_z with its exact CI; ``p_holm`` runs over the budgets of a pair.
    ``glmm`` rows: the log-odds difference from one cell-means mixed model of both
    trial types, per budget, averaged over budgets, and the condition x budget
    interaction (Wald chi-square that the difference is the same at every budget).
    The pooled rows of each method are Holm-adjusted across pairs.
    """
    import pandas as pd

    config = config or AnalysisConfig()
    main = main_trials(df)
    rows: list[dict[str, Any]] = []
    for a, b in _pairs(list(main["condition"].unique())):
        rows += _paired_contrasts(main, a, b, config.ci_level)
        if config.mixed_model:
            rows += _glmm_contrasts(main, a, b, config)
    out = pd.DataFrame(rows, columns=list(CONTRAST_COLUMNS))
    for method in ("paired t", "glmm"):
        pooled = (out["method"] == method) & (out["eps"] == "all")
        out.loc[pooled, "p_holm"] = holm(out.loc[pooled, "p"].to_numpy(float))
    return out


def _cell_means(main: "pd.DataFrame", condition: str) -> tuple[bool, int]:
    means = (main[main["condition"] == condition].groupby(["participant", "eps"])["chose_question_target"].mean()
             .groupby(level="eps").mean().sort_index())
    steps = np.diff(means.to_numpy(float))
    return bool(np.all(steps >= 0)), int(np.sum(steps < 0))


def trend(df: "pd.DataFrame", config: AnalysisConfig | None = None) -> "pd.DataFrame":
    """Dose-response per trial type: the change in log-odds per doubling of the budget (``trend.csv``).

    ``y ~ 1 + log2(eps) + (1|participant) + (1|source)`` (plus, with
    ``random_slope``, an uncorrelated random slope of ``log2(eps)`` by participant;
    when that fit fails or its SD is estimated at zero the intercept-only model is
    reported and ``note`` says so). ``monotone``: the cell means (mean of participant
    means per budget) never decrease from one budget to the next; ``n_decreases``
    counts the steps where they do.
    """
    import pandas as pd

    config = config or AnalysisConfig()
    main = main_trials(df)
    rows = []
    for condition in [c for c in ORDER if c in set(main["condition"])]:
        data = main[main["condition"] == condition]
        monotone, decreases = _cell_means(main, condition)
        base = {"condition": condition, "n_participants": int(data["participant"].nunique()),
                "n_eps": int(data["eps"].nunique()), "monotone": monotone, "n_decreases": decreases}
        if base["n_eps"] < 2 or (data["eps"] <= 0).any():
            rows.append({**base, "note": "needs at least two positive budgets"})
            continue
        rows.append({**base, **_trend_fit(data, config)})
    return pd.DataFrame(rows, columns=list(TREND_COLUMNS))


def _trend_fit(data: "pd.DataFrame", config: AnalysisConfig) -> dict[str, Any]:
    agg = (data.groupby(["participant", "source", "eps"], observed=True)["chose_question_target"]
           .agg(y="sum", n="size").reset_index())
    x = np.log2(agg["eps"].to_numpy(float))
    x = x - x.mean()  # centred, so the intercept is the log-odds at the geometric-mean budget
    X = np.stack([np.ones(len(agg)), x], axis=1)
    groups = {"participant": agg["participant"].to_numpy(), "source": agg["source"].to_numpy()}
    args = (agg["y"].to_numpy(float), X, groups, ["(Intercept)", "log2(eps)"])
    note, model, sd_slope = None, "random intercepts", math.nan
    fit = None
    if config.random_slope:
        try:
            fit = fit_logistic_glmm(*args, trials=agg["n"].to_numpy(float), nagq=config.nagq,
                                    slopes={"participant": x})
            sd_slope = fit.sd.get("participant:slope", math.nan)
            model = "random intercepts + slope by participant"
            if not fit.converged or not sd_slope > 1e-4:
                note = ("random slope not estimable (fit did not converge or its SD is zero): "
                        "the random-intercept model is reported")
                fit, model, sd_slope = None, "random intercepts", math.nan
        except ValueError as exc:
            note = f"random slope not estimable ({exc}): the random-intercept model is reported"
    if fit is None:
        try:
            fit = fit_logistic_glmm(*args, trials=agg["n"].to_numpy(float), nagq=config.nagq)
        except ValueError as exc:
            return {"note": f"not estimable: {exc}", "model": model}
    row = fit.summary(config.ci_level)[1]
    return {"slope": row["estimate"], "ci_low": row["ci_low"], "ci_high": row["ci_high"], "z": row["z"],
            "p": row["p"], "model": model, "sd_slope": sd_slope, "note": note}
