"""The logistic mixed models per trial type (``mixed_model.csv``, ``mixed_model_fits.csv``).

Participants and images as crossed random intercepts (:mod:`analysis.glmm`); a term
that cannot be estimated is reported as such instead of aborting the analysis.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .common import CONDITION_ORDER, holm, main_trials
from .config import AnalysisConfig

from advbias.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

MIXED_MODEL_COLUMNS = ("term", "estimate", "std_err", "z", "p", "ci_low", "ci_high")


def _fit_condition(main: "pd.DataFrame", condition: str, model: str, nagq: int, level: float) -> tuple[list[dict], dict]:
    from scipy import stats

    from .glmm import fit_logistic_glmm

    agg = (main.groupby(["participant", "source", "eps"], sort=False, observed=True)["chose_question_target"]
           .agg(y="sum", n="size").reset_index())
    levels = np.sort(agg["eps"].unique())
    if model == "intercept":
        X = np.ones((len(agg), 1))
        terms = ["(Intercept)"]
    else:
        X = (agg["eps"].to_numpy()[:, None] == levels[None, :]).astype(float)
        terms = [f"eps={int(e)}" for e in levels]
    groups = {"participant": agg["participant"].to_numpy(), "source": agg["source"].to_numpy()}
    base = {"model": model, "condition": condition}
    try:
        fit = fit_logistic_glmm(agg["y"].to_numpy(float), X, groups, terms, trials=agg["n"].to_numpy(float),
                                nagq=nagq)
    except ValueError as exc:
        # No finite estimate (e.g. every answer at a budget the same): say so instead of aborting the analysis.
        sizes = {"n_obs": int(agg["n"].sum()), "n_participants": int(agg["participant"].nunique()),
                 "n_images": int(agg["source"].nunique())}
        note = f"not estimable: {exc}"
        rows = [{**base, "effect": "fixed", "term": t, "note": note, **sizes} for t in terms]
        return rows, {**base, **sizes, "converged": False, "note": note}
    rows = []
    summary = fit.summary(level)
    p_holm = holm(np.array([r["p"] for r in summary])) if model == "eps" else [math.nan] * len(summary)
    for row, adjusted in zip(summary, p_holm):
        penalized = fit.penalized.get(row["term"])
        rows.append({**base, "effect": "fixed", **row, "p_holm": adjusted,
                     "note": f"penalised (Jeffreys prior): {penalized}" if penalized else None,
                     "odds_ratio": math.exp(row["estimate"]), "or_ci_low": math.exp(row["ci_low"]),
                     "or_ci_high": math.exp(row["ci_high"]),
                     "prob": 1 / (1 + math.exp(-row["estimate"])), "prob_ci_low": 1 / (1 + math.exp(-row["ci_low"])),
                     "prob_ci_high": 1 / (1 + math.exp(-row["ci_high"]))})
    for name, sd in fit.sd.items():
        rows.append({**base, "effect": "ran_pars", "term": f"sd({name})", "estimate": sd})
    n_participants = fit.n_groups.get("participant", 0)
    info = {**base, "n_obs": fit.n_obs, "n_participants": n_participants, "n_images": fit.n_groups.get("source", 0),
            "deviance": fit.deviance, "aic": fit.deviance + 2 * (len(terms) + len(fit.sd)),
            "sd_participant": fit.sd.get("participant"), "sd_source": fit.sd.get("source"),
            "singular": any(v < 1e-4 for v in fit.sd.values()), "converged": fit.converged,
            "nagq": fit.nagq, "evaluations": fit.evaluations,
            "note": ("penalised term(s) " + ", ".join(fit.penalized) + ": complete separation, estimated with a "
                     "Jeffreys prior (half a success and half a failure) instead of maximum likelihood")
            if fit.penalized else None}
    if model == "eps" and len(terms) > 1:
        # Wald test that every budget has the same log-odds (contrasts against the first).
        L = np.zeros((len(terms) - 1, len(terms)))
        L[:, 0] = -1.0
        L[np.arange(len(terms) - 1), np.arange(1, len(terms))] = 1.0
        diff = L @ fit.beta
        chi2 = float(diff @ np.linalg.solve(L @ fit.cov @ L.T, diff))
        info.update(wald_chi2_equal_eps=chi2, wald_df=len(terms) - 1,
                    wald_p=float(stats.chi2.sf(chi2, len(terms) - 1)))
    for row in rows:
        row.update(n_obs=fit.n_obs, n_participants=n_participants, n_images=info["n_images"])
    return rows, info


def mixed_model(df: "pd.DataFrame", config: AnalysisConfig | None = None,
                models: Sequence[str] = ("intercept", "eps"), *, fits: bool = False):
    """Logistic mixed models of ``chose_question_target`` per condition (``mixed_model.csv``).

    ``intercept``: ``y ~ 1 + (1|participant) + (1|source)``, the overall bias;
    ``eps``: ``y ~ 0 + factor(eps) + (1|participant) + (1|source)``, one log-odds per
    budget, each tested against 0 (chance), Holm-adjusted across budgets.
    Fixed-effect rows carry ``term, estimate, std_err, z, p, ci_low, ci_high`` on
    the log-odds scale plus odds ratios and probabilities; ``ran_pars`` rows give
    the random-intercept SDs. With ``fits=True`` returns ``(table, fit_details)``,
    the latter one row per fitted model: sizes, deviance, AIC, SDs, convergence and
    (``eps`` model) the Wald test that all budgets share one log-odds.
    """
    import pandas as pd

    config = config or AnalysisConfig()
    main = main_trials(df)
    rows, details = [], []
    for model in models:
        if model not in ("intercept", "eps"):
            raise InputError(f"unknown mixed model {model!r}: use 'intercept' or 'eps'")
    for condition in sorted(main["condition"].unique(), key=lambda c: CONDITION_ORDER.get(c, 99)):
        subset = main[main["condition"] == condition]
        for model in models:
            model_rows, info = _fit_condition(subset, condition, model, config.nagq, config.ci_level)
            rows += model_rows
            details.append(info)
    out = pd.DataFrame(rows)
    first = ["condition", "model", "effect", *MIXED_MODEL_COLUMNS]
    out = out[first + [c for c in out.columns if c not in first]]
    return (out, pd.DataFrame(details)) if fits else out
