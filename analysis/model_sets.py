"""The model set as a factor: do people follow perturbations made on some model families more than others?

A study over several model sets (``model_sets`` in the experiment's TOML; the export's
``model_set`` column) shows each photo on one set only, so sets are compared within
participants (every participant sees every set) but across photos. Written when the
export holds more than one model set (formulas in ``docs/analysis.md``):

``bias_by_model_set.csv``
    trial type x model set x budget: bias (mean of participant means), t-CI, the one-sample
    tests of :func:`analysis.stats.ttests` (Holm over the budgets of each trial type and set).
``model_set_contrasts.csv``
    every pair of model sets within each trial type: ``paired t`` on participant means per
    budget and pooled, and a cell-means ``glmm`` (log-odds differences per budget, pooled,
    and the set x budget interaction); the same computations as ``contrasts.csv`` uses for
    trial types, with the model set in the place of the trial type.
``mixed_model_by_model_set.csv``
    per trial type, ``y ~ 0 + factor(eps) + model_set + (1|participant) + (1|source)``
    (treatment coding against the first set): the model set as a term of the mixed
    model, its log-odds ratio per set, and a Wald test that every set has the same effect.
``human_vs_machine_by_model_set.csv``
    with ``--observers``: every machine observer's bias on each set's images beside the
    people's on the same set (do people follow the sets that held-out models follow?).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .config import AnalysisConfig

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

BY = ("condition", "model_set", "eps")
CONTRAST_COLUMNS = ("condition", "model_set", "baseline_model_set", "eps", "n_participants", "diff", "ci_low",
                    "ci_high", "t", "dof", "p", "p_holm", "method", "scale", "cohen_dz", "dz_ci_low", "dz_ci_high",
                    "chi2", "chi2_df", "note")
HUMAN_VS_MACHINE_COLUMNS = ("condition", "model_set", "eps", "model", "role", "machine_bias", "machine_ci_low",
                            "machine_ci_high", "n_judgments", "human_bias", "human_ci_low", "human_ci_high",
                            "n_participants", "machine_minus_human")


def model_sets_of(df: "pd.DataFrame") -> list[str]:
    """The model sets of the main trials, in sorted order (``[""]`` for a study without model sets)."""
    main = df[(df["kind"] == "main") & (df["condition"] != "catch")]
    column = main["model_set"] if "model_set" in main else None
    return sorted(set(column.fillna("").astype(str))) if column is not None else [""]


def bias_by_model_set(df: "pd.DataFrame", config: AnalysisConfig | None = None) -> "pd.DataFrame":
    """``bias_by_model_set.csv``: :func:`analysis.stats.perceptual_bias` and ``ttests`` by trial type, set, budget."""
    from . import stats

    config = config or AnalysisConfig()
    bias = stats.perceptual_bias(df, config.ci_level, config.n_boot, config.seed, by=BY)
    tests = stats.ttests(df, config.chance, by=BY, level=config.ci_level).drop(columns="n_participants")
    out = bias.merge(tests, on=list(BY), how="left")
    first = [c for c in (*BY, "n_participants", "n_trials", "bias", "ci_low", "ci_high", "t", "dof", "p", "p_holm",
                         "cohen_d", "bf10") if c in out.columns]
    return out[first + [c for c in out.columns if c not in first]]


def model_set_contrasts(df: "pd.DataFrame", config: AnalysisConfig | None = None) -> "pd.DataFrame":
    """``model_set_contrasts.csv``: each pair of sets (earlier minus later, sorted) within each trial type."""
    import pandas as pd

    from . import common, effects

    config = config or AnalysisConfig()
    main = common.main_trials(df)
    sets = model_sets_of(df)
    rows: list[dict[str, Any]] = []
    for condition in sorted(main["condition"].unique(), key=lambda c: common.CONDITION_ORDER.get(c, 99)):
        # The trial-type contrasts, with the model set standing in the "condition" column.
        subset = main[main["condition"] == condition].assign(condition=lambda d: d["model_set"].astype(str))
        for i, a in enumerate(sets):
            for b in sets[i + 1:]:
                found = effects._paired_contrasts(subset, a, b, config.ci_level)
                if config.mixed_model:
                    found += effects._glmm_contrasts(subset, a, b, config)
                rows += [{**r, "condition": condition, "model_set": a, "baseline_model_set": b} for r in found]
    out = pd.DataFrame(rows, columns=list(CONTRAST_COLUMNS))
    for method in ("paired t", "glmm"):  # pooled rows: Holm across set pairs and trial types
        pooled = (out["method"] == method) & (out["eps"] == "all")
        out.loc[pooled, "p_holm"] = common.holm(out.loc[pooled, "p"].to_numpy(float))
    return out


def _set_term_fit(main: "pd.DataFrame", condition: str, sets: list[str], config: AnalysisConfig) -> list[dict]:
    """One trial type's additive model: a log-odds per budget plus a shift per model set (against the first)."""
    from scipy import stats as sps

    from .glmm import fit_logistic_glmm

    agg = (main.groupby(["participant", "source", "eps", "model_set"], observed=True)["chose_question_target"]
           .agg(y="sum", n="size").reset_index())
    levels = sorted(agg["eps"].unique())
    present = [s for s in sets if (agg["model_set"] == s).any()]
    X = np.column_stack([(agg["eps"] == e).to_numpy(float) for e in levels]
                        + [(agg["model_set"] == s).to_numpy(float) for s in present[1:]])
    terms = [f"eps={int(e)}" for e in levels] + [f"model_set={s} vs {present[0]}" for s in present[1:]]
    base = {"condition": condition, "baseline_model_set": present[0]}
    try:
        fit = fit_logistic_glmm(agg["y"].to_numpy(float), X, {"participant": agg["participant"].to_numpy(),
                                                              "source": agg["source"].to_numpy()},
                                terms, trials=agg["n"].to_numpy(float), nagq=config.nagq)
    except ValueError as exc:
        return [{**base, "term": "model_set", "note": f"not estimable: {exc}"}]
    rows = [{**base, **r, "odds_ratio": math.exp(r["estimate"]),
             "note": f"penalised (Jeffreys prior): {fit.penalized[r['term']]}" if r["term"] in fit.penalized else None}
            for r in fit.summary(config.ci_level)]
    k = len(present) - 1
    if k:
        idx = np.arange(len(levels), len(levels) + k)
        beta, cov = fit.beta[idx], fit.cov[np.ix_(idx, idx)]
        chi2 = float(beta @ np.linalg.solve(cov, beta))
        rows.append({**base, "term": "model_set (all)", "chi2": chi2, "chi2_df": k,
                     "p": float(sps.chi2.sf(chi2, k)),
                     "note": "Wald test that every model set has the same effect (given the budget)"})
    for row in rows:
        row.update(n_obs=fit.n_obs, n_participants=fit.n_groups.get("participant", 0),
                   n_images=fit.n_groups.get("source", 0))
    return rows


def mixed_model_by_model_set(df: "pd.DataFrame", config: AnalysisConfig | None = None) -> "pd.DataFrame":
    """``mixed_model_by_model_set.csv``: the model set as a term of each trial type's mixed model."""
    import pandas as pd

    from . import common

    config = config or AnalysisConfig()
    main = common.main_trials(df).assign(model_set=lambda d: d["model_set"].fillna("").astype(str))
    sets = model_sets_of(df)
    rows: list[dict] = []
    for condition in sorted(main["condition"].unique(), key=lambda c: common.CONDITION_ORDER.get(c, 99)):
        rows += _set_term_fit(main[main["condition"] == condition], condition, sets, config)
    out = pd.DataFrame(rows)
    first = ["condition", "term", "estimate", "std_err", "z", "p", "ci_low", "ci_high", "odds_ratio", "chi2",
             "chi2_df", "baseline_model_set"]
    for column in first:
        if column not in out:
            out[column] = math.nan
    return out[first + [c for c in out.columns if c not in first]]


def human_vs_machine_by_model_set(by_set: "pd.DataFrame", observers: "pd.DataFrame") -> "pd.DataFrame":
    """One row per (trial type, model set, budget, observer) that both people and the observer answered."""
    humans = by_set[list(BY) + ["bias", "ci_low", "ci_high", "n_participants"]].rename(
        columns={"bias": "human_bias", "ci_low": "human_ci_low", "ci_high": "human_ci_high"})
    machines = observers.rename(columns={"bias": "machine_bias", "ci_low": "machine_ci_low",
                                         "ci_high": "machine_ci_high"})
    machines = machines.assign(model_set=machines["model_set"].fillna("").astype(str))
    humans = humans.assign(model_set=humans["model_set"].astype(str)).astype({"eps": int})
    out = machines.merge(humans, on=list(BY), how="inner")
    out["machine_minus_human"] = out["machine_bias"] - out["human_bias"]
    order = {r: i for i, r in enumerate(("held_out", "other", "attacked"))}
    out = out.assign(_r=out["role"].map(order)).sort_values(["condition", "model_set", "eps", "_r", "model"],
                                                           kind="stable")
    return out[list(HUMAN_VS_MACHINE_COLUMNS)].reset_index(drop=True)


def model_set_tables(kept: "pd.DataFrame", config: AnalysisConfig,
                     observers: "pd.DataFrame | None" = None) -> dict[str, "pd.DataFrame"]:
    """Every model-set table for an export with more than one model set; none otherwise."""
    if len(model_sets_of(kept)) < 2:
        return {}
    tables = {"bias_by_model_set": bias_by_model_set(kept, config),
              "model_set_contrasts": model_set_contrasts(kept, config)}
    if config.mixed_model:
        tables["mixed_model_by_model_set"] = mixed_model_by_model_set(kept, config)
    if observers is not None:
        tables["human_vs_machine_by_model_set"] = human_vs_machine_by_model_set(tables["bias_by_model_set"],
                                                                               observers)
    return tables


def model_set_section(doc: Any, tables: Mapping[str, "pd.DataFrame"]) -> None:
    """The report's section on model sets (nothing when the study has one set)."""
    if "bias_by_model_set" not in tables:
        return
    doc.heading("Model sets")
    doc.para("Bias by the set of models the images were made on (each participant sees every set, each photo on "
             "one set only): the mean of participant means per trial type, model set and budget.")
    doc.table(tables["bias_by_model_set"], "bias_by_model_set.csv")
    doc.para("Differences between model sets within each trial type: `paired t` on participant means (per budget, "
             "Holm over budgets; `all`: pooled) and a cell-means mixed model (log-odds; `interaction`: whether the "
             "difference depends on the budget).")
    doc.table(tables["model_set_contrasts"], "model_set_contrasts.csv")
    if "mixed_model_by_model_set" in tables:
        doc.para("The model set as a term of the mixed model: log-odds per budget plus a shift per set against the "
                 "first, with random intercepts for participants and photos.")
        doc.table(tables["mixed_model_by_model_set"], "mixed_model_by_model_set.csv")
    if "human_vs_machine_by_model_set" in tables:
        doc.para("Machine observers on each set's images beside the people on the same set.")
        doc.table(tables["human_vs_machine_by_model_set"], "human_vs_machine_by_model_set.csv")
