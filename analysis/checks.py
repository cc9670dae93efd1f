"""Checks beside the main outcome: side preference, response times, catch accuracy.

None of them tests the hypothesis; each can reveal careless responding or a broken
presentation (``side_bias.csv``, ``rt_by_eps.csv``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .common import main_trials, sort_table, t_interval
from .bias import one_sample_tests
from .config import AnalysisConfig

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def side_bias(df: "pd.DataFrame", config: AnalysisConfig | None = None) -> "pd.DataFrame":
    """Share of "left" answers per condition (and all main trials), tested against 0.5.

    A strong side preference does not bias the main outcome (the target side is
    counterbalanced) but adds noise and can reveal careless responding.
    """
    import pandas as pd

    config = config or AnalysisConfig()
    main = main_trials(df).assign(chose_left=lambda d: (d["response"] == "left").astype(float))
    frames = [main, main.assign(condition="all")]
    rows = []
    for condition, group in pd.concat(frames).groupby("condition", sort=False):
        means = group.groupby("participant")["chose_left"].mean().to_numpy()
        mean, _, low, high = t_interval(means, config.ci_level)
        tests = one_sample_tests(means, 0.5)
        rows.append({"condition": condition, "n_participants": len(means), "n_trials": len(group),
                     "p_left": mean, "ci_low": low, "ci_high": high, "t": tests["t"], "dof": tests["dof"],
                     "p": tests["p"], "cohen_d": tests["cohen_d"]})
    return sort_table(pd.DataFrame(rows), ["condition"])


def rt_by_eps(df: "pd.DataFrame", config: AnalysisConfig | None = None) -> "pd.DataFrame":
    """Response time per condition x eps: mean (with t-CI) of participant median RTs."""
    import pandas as pd

    config = config or AnalysisConfig()
    main = main_trials(df).dropna(subset=["rt_ms"])
    medians = (main.groupby(["participant", "condition", "eps"], sort=False)["rt_ms"]
               .agg(n_trials="size", median_rt_ms="median").reset_index())
    rows = []
    for (condition, eps), group in medians.groupby(["condition", "eps"], sort=True):
        values = group["median_rt_ms"].to_numpy(dtype=float)
        mean, sd, low, high = t_interval(values, config.ci_level)
        rows.append({"condition": condition, "eps": eps, "n_participants": len(values),
                     "n_trials": int(group["n_trials"].sum()), "median_rt_ms": mean,
                     "ci_low": low, "ci_high": high, "sd": sd})
    columns = ["condition", "eps", "n_participants", "n_trials", "median_rt_ms", "ci_low", "ci_high", "sd"]
    return sort_table(pd.DataFrame(rows, columns=columns))


def participant_rt(df: "pd.DataFrame") -> "pd.DataFrame":
    """Per participant x condition x eps median RT (the points behind :func:`rt_by_eps`)."""
    main = main_trials(df).dropna(subset=["rt_ms"])
    out = (main.groupby(["participant", "condition", "eps"], sort=False)["rt_ms"]
           .agg(n_trials="size", median_rt_ms="median").reset_index())
    return sort_table(out, ["condition", "eps", "participant"])


def catch_accuracy(df: "pd.DataFrame") -> "pd.DataFrame":
    """Per participant: number of catch trials and the share answered correctly."""
    import pandas as pd

    catch = df[df["kind"] == "catch"]
    if catch.empty:
        return pd.DataFrame(columns=["participant", "n_catch", "accuracy"])
    return (catch.groupby("participant", sort=True)["chose_question_target"]
            .agg(n_catch="size", accuracy="mean").reset_index())
