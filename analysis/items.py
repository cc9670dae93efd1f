"""Where the bias comes from: images, the asked category, and the time course of the session.

``bias_by_image.csv`` (one row per image pair and budget: is the effect carried by a
few photos?), ``bias_by_category.csv`` (is "more cat-like?" answered like "more
truck-like?") and ``bias_by_half.csv`` (does the bias change between the first and
second half of a participant's main trials: learning, fatigue?).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from .common import main_trials, sort_table, wilson_ci
from .config import AnalysisConfig

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

IMAGE_COLUMNS = ("source", "pair_key", "condition", "eps", "n_trials", "successes", "bias", "ci_low", "ci_high")
CATEGORY_COLUMNS = ("condition", "question_target", "n_participants", "bias", "ci_low", "ci_high", "t", "dof", "p")
HALF_COLUMNS = ("condition", "half", "n_participants", "bias", "ci_low", "ci_high", "t", "dof", "p")


def bias_by_image(df: "pd.DataFrame", config: AnalysisConfig | None = None) -> "pd.DataFrame":
    """Per image pair (``source``, ``pair_key``), trial type and budget: the share of target choices.

    Trials of all kept participants are pooled (each participant sees an image pair
    about once), with a Wilson interval computed from the counts (``successes`` of ``n_trials``). Sorted by trial type, budget and bias.
    """
    config = config or AnalysisConfig()
    main = main_trials(df).assign(pair_key=lambda d: d["pair_key"].fillna("") if "pair_key" in d else "")
    out = (main.groupby(["source", "pair_key", "condition", "eps"], observed=True)["chose_question_target"]
           .agg(n_trials="size", successes="sum").reset_index())
    out["bias"] = out["successes"] / out["n_trials"]
    out["ci_low"], out["ci_high"] = wilson_ci(out["successes"].to_numpy(), out["n_trials"].to_numpy(),
                                              config.ci_level)
    out = sort_table(out, ["condition", "eps", "bias"])
    return out[list(IMAGE_COLUMNS)]


def _t_row(values: np.ndarray, level: float, chance: float = 0.0) -> dict[str, Any]:
    n = len(values)
    row: dict[str, Any] = {"n_participants": n, "bias": float(np.mean(values)) if n else math.nan}
    if n < 2 or np.std(values, ddof=1) == 0:
        return row
    se = float(np.std(values, ddof=1) / math.sqrt(n))
    half = stats.t.ppf(0.5 + level / 2.0, n - 1) * se
    t = (row["bias"] - chance) / se
    return {**row, "ci_low": row["bias"] - half, "ci_high": row["bias"] + half, "t": t, "dof": float(n - 1),
            "p": float(2 * stats.t.sf(abs(t), n - 1))}


def _split_rows(means: "pd.DataFrame", condition: str, column: str, first: str, second: str, label: str,
                config: AnalysisConfig) -> list[dict[str, Any]]:
    """Rows for each level (tested against chance) and the paired difference ``second - first`` (against 0)."""
    wide = means.pivot(index="participant", columns=column, values="bias")
    rows = []
    for level in (first, second):
        if level in wide:
            rows.append({"condition": condition, column: level,
                         **_t_row(wide[level].dropna().to_numpy(float), config.ci_level, config.chance)})
    if first in wide and second in wide:
        diff = (wide[second] - wide[first]).dropna().to_numpy(float)
        rows.append({"condition": condition, column: label, **_t_row(diff, config.ci_level)})
    return rows


def bias_by_category(df: "pd.DataFrame", config: AnalysisConfig | None = None) -> "pd.DataFrame":
    """Bias per trial type and asked category (mean of participant means), and the asymmetry between them.

    With two categories A and B, the row ``question_target = "B - A"`` is the mean
    over participants of (their bias when asked about B) - (when asked about A), with a
    paired t-test against 0: the perturbation toward one category working better than
    toward the other. The categories are taken in alphabetical order.
    """
    import pandas as pd

    config = config or AnalysisConfig()
    main = main_trials(df)
    rows: list[dict[str, Any]] = []
    if "question_target" not in main.columns:  # an optional column: without it there is nothing to split by
        return pd.DataFrame(rows, columns=list(CATEGORY_COLUMNS))
    for condition, data in main.groupby("condition", sort=False):
        means = (data.groupby(["participant", "question_target"], observed=True)["chose_question_target"].mean()
                 .rename("bias").reset_index())
        asked = sorted(map(str, means["question_target"].dropna().unique()))
        if len(asked) == 2:
            rows += _split_rows(means, condition, "question_target", asked[0], asked[1], f"{asked[1]} - {asked[0]}",
                                config)
        else:
            for category in asked:
                values = means.loc[means["question_target"] == category, "bias"].to_numpy(float)
                rows.append({"condition": condition, "question_target": category,
                             **_t_row(values, config.ci_level, config.chance)})
    return sort_table(pd.DataFrame(rows, columns=list(CATEGORY_COLUMNS)), ["condition"])


def bias_by_half(df: "pd.DataFrame", config: AnalysisConfig | None = None) -> "pd.DataFrame":
    """Bias in the first and the second half of each participant's main trials (by ``trial_index``).

    A participant's main trials of all trial types are ordered by ``trial_index`` and
    split at the middle (an odd trial goes to the second half); the row ``second -
    first`` is the paired difference of the halves' means per participant.
    """
    import pandas as pd

    config = config or AnalysisConfig()
    main = main_trials(df).sort_values(["participant", "trial_index"])
    position = main.groupby("participant").cumcount()
    size = main.groupby("participant")["trial_index"].transform("size")
    main = main.assign(half=np.where(position < size // 2, "first", "second"))
    rows: list[dict[str, Any]] = []
    for condition, data in main.groupby("condition", sort=False):
        means = (data.groupby(["participant", "half"])["chose_question_target"].mean().rename("bias").reset_index())
        rows += _split_rows(means, condition, "half", "first", "second", "second - first", config)
    return sort_table(pd.DataFrame(rows, columns=list(HALF_COLUMNS)), ["condition"])
