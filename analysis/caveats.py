"""Plain-language warnings: where an estimate of the report is not available, and why (``warnings.csv``).

A small pilot, an image chosen every time or a budget where every answer is the same
is an ordinary export: the analysis still writes every table and figure, leaves the
estimates it cannot make empty, and says so here, once per cause, in words a reader
of the report understands (also printed on stderr by ``advbias analyze``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def _kept(tables: Mapping[str, "pd.DataFrame"]) -> int:
    summary = tables["participants"]
    return int((~summary["excluded"]).sum())


def _bias_warnings(tables: Mapping[str, "pd.DataFrame"]) -> list[str]:
    out = []
    if _kept(tables) == 1:
        out.append("Only one participant was kept: the t-tests, their intervals, Cohen's d and the Bayes factors "
                   "need at least two participants, so they are left empty; the mixed model and the per-image "
                   "shares still use every trial.")
        return out
    by_eps = tables["bias_by_eps"]
    few = by_eps[by_eps["n_participants"] < 2]
    for row in few.itertuples(index=False):
        out.append(f"{row.condition} at budget {row.eps}: only one participant, so no t-test or interval.")
    flat = by_eps[(by_eps["n_participants"] >= 2) & by_eps["t"].isna()]
    for row in flat.itertuples(index=False):
        out.append(f"{row.condition} at budget {row.eps}: every participant has the same bias "
                   f"({row.bias:.3f}), so the t statistic is undefined and no test is reported.")
    return out


def _model_warnings(tables: Mapping[str, "pd.DataFrame"]) -> list[str]:
    out = []
    fits = tables.get("mixed_model_fits")
    if fits is not None and len(fits):
        for row in fits[fits["note"].notna()].itertuples(index=False):
            note = str(row.note)
            if note.startswith("not estimable"):
                out.append(f"Mixed model ({row.model}) for {row.condition} could not be fitted ({note[15:].strip(': ')}); "
                           "its rows in mixed_model.csv are empty.")
            else:
                out.append(f"Mixed model ({row.model}) for {row.condition}: {note}.")
    primary = tables.get("primary")
    if primary is not None:
        for row in primary[primary["p"].isna()].itertuples(index=False):
            out.append(f"Primary test for {row.condition}: not available (too few participants or images, or no "
                       "variability); its row in primary.csv is empty.")
    trend = tables.get("trend")
    if trend is not None:
        for row in trend[trend["slope"].isna()].itertuples(index=False):
            out.append(f"Dose-response for {row.condition}: not estimated ({row.note or 'no fit'}).")
    return out


def caveats(tables: Mapping[str, "pd.DataFrame"]) -> "pd.DataFrame":
    """One row per warning (column ``warning``), in report order, each cause once."""
    import pandas as pd

    found = _bias_warnings(tables) + _model_warnings(tables)
    if tables["bias_by_category"].empty:
        found.append("The export has no question_target column (or no asked category): bias_by_category.csv is "
                     "empty.")
    if tables["rt_by_eps"].empty:
        found.append("No response times were recorded on the kept main trials: rt_by_eps.csv is empty.")
    return pd.DataFrame({"warning": list(dict.fromkeys(found))}, dtype="object")
