"""The statistics of the study, as functions from tidy trial tables to tidy result tables.

Every function takes the trial-level export (as returned by
:func:`analysis.load_export`, usually after :func:`apply_exclusions`) and returns a
new :class:`pandas.DataFrame`; nothing is modified in place. Main trials are the
only ones that count for bias; practice trials never count; catch trials only
measure attention. The formulas are in ``docs/analysis.md``.
"""
from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Sequence

import numpy as np

from advbias.trials import MAIN_TRIAL_TYPES

from .config import AnalysisConfig, ExclusionRules

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: The columns ``bias_by_eps.csv`` starts with, in this order (issue contract).
BIAS_BY_EPS_COLUMNS = ("condition", "eps", "n_participants", "n_trials", "bias", "ci_low", "ci_high",
                       "t", "dof", "p", "p_holm", "cohen_d", "bf10")
#: The columns ``mixed_model.csv`` starts with, in this order.
MIXED_MODEL_COLUMNS = ("term", "estimate", "std_err", "z", "p", "ci_low", "ci_high")
#: The columns of ``exclusions.csv``.
EXCLUSION_COLUMNS = ("participant", "prolific_pid", "participant_status", "reason", "n_main_trials",
                     "catch_accuracy", "fast_fraction", "not_fullscreen_fraction", "blurred_fraction")

_CONDITION_ORDER = {name: i for i, name in enumerate(MAIN_TRIAL_TYPES)}


def _main(df: "pd.DataFrame") -> "pd.DataFrame":
    main = df[(df["kind"] == "main") & (df["condition"] != "catch")]
    if main.empty:
        raise ValueError("no main trials to analyse (all excluded, or the export holds only practice/catch trials)")
    return main


def _sort(frame: "pd.DataFrame", by: Sequence[str] = ("condition", "eps")) -> "pd.DataFrame":
    keys = list(by)
    if "condition" in keys:
        frame = frame.assign(_order=frame["condition"].map(_CONDITION_ORDER).fillna(99))
        keys = ["_order" if k == "condition" else k for k in keys]
        return frame.sort_values(keys, kind="stable").drop(columns="_order").reset_index(drop=True)
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- exclusions
def _fullscreen_required(base: "pd.DataFrame", out: "pd.DataFrame") -> "pd.Series":
    """Per participant: did the page require fullscreen? A study that only recommended it (or did not ask)
    let people answer outside it, so the fullscreen rule must not exclude them; exports that do not say
    (no ``fullscreen_mode``) are held to the rule."""
    import pandas as pd

    if "fullscreen_mode" not in base:
        return pd.Series(True, index=out.index)
    mode = base["fullscreen_mode"].reindex(out.index).astype("string")
    return (mode.isna() | (mode == "required")).astype(bool)


def participant_summary(df: "pd.DataFrame", rules: ExclusionRules | None = None) -> "pd.DataFrame":
    """One row per participant: the quantities the exclusion rules look at, and the verdict.

    Computed over non-practice trials (main and catch). ``reason`` lists every
    rule the participant breaks (``; ``-separated), empty when kept.
    """
    import pandas as pd

    rules = rules or ExclusionRules()
    trials = df[df["kind"] != "practice"]
    everyone = df.drop_duplicates("participant")
    base = everyone.set_index("participant")
    out = pd.DataFrame(index=pd.Index(everyone["participant"], name="participant"))
    out["prolific_pid"] = base["prolific_pid"] if "prolific_pid" in base else pd.NA
    out["participant_status"] = base["participant_status"]
    grouped = trials.groupby("participant", sort=False)
    out["n_main_trials"] = (trials["kind"] == "main").groupby(trials["participant"]).sum()
    out["n_catch_trials"] = (trials["kind"] == "catch").groupby(trials["participant"]).sum()
    catch = trials[trials["kind"] == "catch"]
    out["catch_accuracy"] = catch.groupby("participant")["chose_question_target"].mean()
    rt = trials["rt_ms"]
    fast = (rt < rules.min_rt_ms).astype(float) if rules.min_rt_ms > 0 else rt * 0.0
    out["fast_fraction"] = fast.groupby(trials["participant"]).mean()
    out["not_fullscreen_fraction"] = (1.0 - trials["fullscreen"].astype("Float64")).groupby(trials["participant"]).mean()
    out["blurred_fraction"] = trials["blurred"].astype("Float64").groupby(trials["participant"]).mean()
    out["median_rt_ms"] = grouped["rt_ms"].median()
    _server_timing(out, trials, rules)
    out[["n_main_trials", "n_catch_trials"]] = out[["n_main_trials", "n_catch_trials"]].fillna(0).astype(int)
    for column in ("catch_accuracy", "fast_fraction", "not_fullscreen_fraction", "blurred_fraction"):
        out[column] = pd.to_numeric(out[column], errors="coerce").astype(float)

    reasons: list[list[str]] = [[] for _ in range(len(out))]

    def flag(mask: "pd.Series", text: str) -> None:
        for i in np.flatnonzero(mask.fillna(False).to_numpy(dtype=bool)):
            reasons[i].append(text)

    if rules.require_completed:
        flag(out["participant_status"] == "in_progress", "incomplete")
        flag(out["participant_status"] == "screened_out", "screened_out")
    flag(out["n_main_trials"] == 0, "no_main_trials")
    if rules.min_catch_accuracy > 0:
        flag(out["catch_accuracy"] < rules.min_catch_accuracy,
             f"catch_accuracy<{rules.min_catch_accuracy:g}")
    if rules.min_rt_ms > 0 and rules.max_fast_fraction < 1:
        flag(out["fast_fraction"] > rules.max_fast_fraction,
             f"fast_responses>{rules.max_fast_fraction:g}")
    if rules.max_not_fullscreen_fraction < 1:  # only where the page required fullscreen (or the export does not say)
        flag((out["not_fullscreen_fraction"] > rules.max_not_fullscreen_fraction) & _fullscreen_required(base, out),
             f"left_fullscreen>{rules.max_not_fullscreen_fraction:g}")
    if rules.max_blurred_fraction < 1:
        flag(out["blurred_fraction"] > rules.max_blurred_fraction,
             f"blurred>{rules.max_blurred_fraction:g}")
    if out.attrs["server_rt"]:
        if rules.min_median_server_rt_ms > 0:
            flag(out["median_server_rt_ms"] < rules.min_median_server_rt_ms,
                 f"median_server_rt<{rules.min_median_server_rt_ms:g}ms")
        if rules.max_rt_over_server_fraction < 1:
            flag(out["rt_over_server_fraction"] > rules.max_rt_over_server_fraction,
                 f"rt_over_server>{rules.max_rt_over_server_fraction:g}")
    out["reason"] = ["; ".join(r) for r in reasons]
    out["excluded"] = out["reason"] != ""
    return out.reset_index()


def _server_timing(out: "pd.DataFrame", trials: "pd.DataFrame", rules: ExclusionRules) -> None:
    """Add the server-side timing checks (``server_rt_ms``), or NaN and a note when the export lacks it.

    ``server_rt_ms`` is the time between the server delivering a trial and receiving
    its answer, so an honest browser's ``rt_ms`` cannot exceed it by more than clock
    jitter (``server_rt_slack_ms``), and a person cannot answer every trial in a few
    hundred milliseconds of server time. Both shares are over non-practice trials.
    """
    present = "server_rt_ms" in trials.columns and trials["server_rt_ms"].notna().any()
    out.attrs["server_rt"] = bool(present)
    if not present:
        out["median_server_rt_ms"] = math.nan
        out["rt_over_server_fraction"] = math.nan
        return
    server = trials["server_rt_ms"].astype(float)
    over = (trials["rt_ms"].astype(float) > server + rules.server_rt_slack_ms).astype(float).where(server.notna())
    out["median_server_rt_ms"] = server.groupby(trials["participant"]).median()
    out["rt_over_server_fraction"] = over.groupby(trials["participant"]).mean()


def apply_exclusions(
    df: "pd.DataFrame", config: AnalysisConfig | ExclusionRules | None = None
) -> tuple["pd.DataFrame", "pd.DataFrame"]:
    """Apply the pre-stated exclusions; return ``(kept_trials, excluded_participants)``.

    ``kept_trials`` holds the main and catch trials of the kept participants, minus
    main trials outside the RT window; practice trials are always dropped.
    ``excluded_participants`` has one row per excluded participant with every
    reason (columns :data:`EXCLUSION_COLUMNS`). The number of trials dropped for
    RT alone is in ``kept_trials.attrs["rt_excluded_trials"]``.
    """
    rules = config.exclusions if isinstance(config, AnalysisConfig) else (config or ExclusionRules())
    summary = participant_summary(df, rules)
    excluded = summary[summary["excluded"]]
    keep_ids = set(summary.loc[~summary["excluded"], "participant"])
    kept = df[(df["kind"] != "practice") & df["participant"].isin(keep_ids)]
    rt = kept["rt_ms"]
    out_of_window = (kept["kind"] == "main") & rt.notna() & (
        ((rt < rules.min_rt_ms) if rules.min_rt_ms > 0 else False)
        | ((rt > rules.max_rt_ms) if rules.max_rt_ms > 0 else False)
    )
    kept = kept[~out_of_window].reset_index(drop=True)
    kept.attrs["rt_excluded_trials"] = int(out_of_window.sum())
    return kept, excluded[list(EXCLUSION_COLUMNS)].reset_index(drop=True)


def exclusion_counts(summary: "pd.DataFrame", rt_excluded_trials: int = 0) -> "pd.DataFrame":
    """How many participants each rule removed (a participant can break several), plus the RT trial filter."""
    import pandas as pd

    rows = [{"reason": "participants (all)", "n_participants": len(summary), "n_trials": math.nan}]
    counts: dict[str, int] = {}
    for reason in summary["reason"]:
        for part in filter(None, reason.split("; ")):
            counts[part] = counts.get(part, 0) + 1
    rows += [{"reason": k, "n_participants": v, "n_trials": math.nan} for k, v in sorted(counts.items())]
    rows.append({"reason": "excluded (any reason)", "n_participants": int(summary["excluded"].sum()),
                 "n_trials": math.nan})
    rows.append({"reason": "kept", "n_participants": int((~summary["excluded"]).sum()), "n_trials": math.nan})
    rows.append({"reason": "main trials outside the RT window (dropped)", "n_participants": math.nan,
                 "n_trials": rt_excluded_trials})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- bias
def participant_means(df: "pd.DataFrame", by: Sequence[str] = ("condition", "eps")) -> "pd.DataFrame":
    """Per participant x condition x eps: ``n_trials`` and ``bias`` (mean of ``chose_question_target``)."""
    main = _main(df)
    keys = ["participant", *by]
    out = (main.groupby(keys, sort=False, observed=True)["chose_question_target"]
           .agg(n_trials="size", bias="mean").reset_index())
    out["bias"] = out["bias"].astype(float)
    return _sort(out, [k for k in ("condition", "eps", "participant") if k in keys])


def _t_ci(values: np.ndarray, level: float) -> tuple[float, float, float, float]:
    from scipy import stats

    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(np.std(values, ddof=1))
    half = stats.t.ppf(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


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
        mean, sd, low, high = _t_ci(values, level)
        boot_low, boot_high = _bootstrap_ci(values, level, n_boot, rng)
        rows.append({**dict(zip(keys, key)), "n_participants": len(values),
                     "n_trials": int(group["n_trials"].sum()), value: mean, "ci_low": low, "ci_high": high,
                     "sd": sd, "sem": sd / math.sqrt(len(values)) if len(values) > 1 else math.nan,
                     "boot_ci_low": boot_low, "boot_ci_high": boot_high})
    return _sort(pd.DataFrame(rows), keys)


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
    main = _main(df)
    pooled = main.groupby(list(by))["chose_question_target"].mean().rename("pooled_bias").reset_index()
    return out.merge(pooled, on=list(by), how="left")


def _holm(p: np.ndarray) -> np.ndarray:
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


def one_sample_tests(values: np.ndarray, chance: float = 0.5, level: float = 0.95) -> dict[str, float]:
    """t-test (pingouin: t, dof, p, Cohen's d with its exact ``level`` CI, JZS BF10) and Wilcoxon signed-rank."""
    import pingouin as pg
    from scipy import stats

    values = np.asarray(values, dtype=float)
    n = len(values)
    from .effects import cohen_d_ci

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
    out = _sort(pd.DataFrame(rows), list(by))
    family = [k for k in by if k != "eps"]
    for column in ("p", "wilcoxon_p"):
        adjusted = np.full(len(out), np.nan)
        groups = out.groupby(family, sort=False).indices.values() if family else [np.arange(len(out))]
        for index in groups:
            adjusted[index] = _holm(out[column].to_numpy()[index])
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


# --------------------------------------------------------------------------- checks
def side_bias(df: "pd.DataFrame", config: AnalysisConfig | None = None) -> "pd.DataFrame":
    """Share of "left" answers per condition (and all main trials), tested against 0.5.

    A strong side preference does not bias the main outcome (the target side is
    counterbalanced) but adds noise and can reveal careless responding.
    """
    import pandas as pd

    config = config or AnalysisConfig()
    main = _main(df).assign(chose_left=lambda d: (d["response"] == "left").astype(float))
    frames = [main, main.assign(condition="all")]
    rows = []
    for condition, group in pd.concat(frames).groupby("condition", sort=False):
        means = group.groupby("participant")["chose_left"].mean().to_numpy()
        mean, _, low, high = _t_ci(means, config.ci_level)
        tests = one_sample_tests(means, 0.5)
        rows.append({"condition": condition, "n_participants": len(means), "n_trials": len(group),
                     "p_left": mean, "ci_low": low, "ci_high": high, "t": tests["t"], "dof": tests["dof"],
                     "p": tests["p"], "cohen_d": tests["cohen_d"]})
    return _sort(pd.DataFrame(rows), ["condition"])


def rt_by_eps(df: "pd.DataFrame", config: AnalysisConfig | None = None) -> "pd.DataFrame":
    """Response time per condition x eps: mean (with t-CI) of participant median RTs."""
    import pandas as pd

    config = config or AnalysisConfig()
    main = _main(df).dropna(subset=["rt_ms"])
    medians = (main.groupby(["participant", "condition", "eps"], sort=False)["rt_ms"]
               .agg(n_trials="size", median_rt_ms="median").reset_index())
    rows = []
    for (condition, eps), group in medians.groupby(["condition", "eps"], sort=True):
        values = group["median_rt_ms"].to_numpy(dtype=float)
        mean, sd, low, high = _t_ci(values, config.ci_level)
        rows.append({"condition": condition, "eps": eps, "n_participants": len(values),
                     "n_trials": int(group["n_trials"].sum()), "median_rt_ms": mean,
                     "ci_low": low, "ci_high": high, "sd": sd})
    return _sort(pd.DataFrame(rows))


def participant_rt(df: "pd.DataFrame") -> "pd.DataFrame":
    """Per participant x condition x eps median RT (the points behind :func:`rt_by_eps`)."""
    main = _main(df).dropna(subset=["rt_ms"])
    out = (main.groupby(["participant", "condition", "eps"], sort=False)["rt_ms"]
           .agg(n_trials="size", median_rt_ms="median").reset_index())
    return _sort(out, ["condition", "eps", "participant"])


def catch_accuracy(df: "pd.DataFrame") -> "pd.DataFrame":
    """Per participant: number of catch trials and the share answered correctly."""
    import pandas as pd

    catch = df[df["kind"] == "catch"]
    if catch.empty:
        return pd.DataFrame(columns=["participant", "n_catch", "accuracy"])
    return (catch.groupby("participant", sort=True)["chose_question_target"]
            .agg(n_catch="size", accuracy="mean").reset_index())


# --------------------------------------------------------------------------- mixed model
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
    p_holm = _holm(np.array([r["p"] for r in summary])) if model == "eps" else [math.nan] * len(summary)
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
    main = _main(df)
    rows, details = [], []
    for model in models:
        if model not in ("intercept", "eps"):
            raise ValueError(f"unknown mixed model {model!r}: use 'intercept' or 'eps'")
    for condition in sorted(main["condition"].unique(), key=lambda c: _CONDITION_ORDER.get(c, 99)):
        subset = main[main["condition"] == condition]
        for model in models:
            model_rows, info = _fit_condition(subset, condition, model, config.nagq, config.ci_level)
            rows += model_rows
            details.append(info)
    out = pd.DataFrame(rows)
    first = ["condition", "model", "effect", *MIXED_MODEL_COLUMNS]
    out = out[first + [c for c in out.columns if c not in first]]
    return (out, pd.DataFrame(details)) if fits else out
