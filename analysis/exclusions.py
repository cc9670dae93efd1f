"""Exclusions: who is kept, by which pre-stated rule (``participants.csv``, ``exclusions.csv``).

Every rule is in :class:`analysis.config.ExclusionRules`; a participant can break several,
and each one broken is listed.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .config import AnalysisConfig, ExclusionRules

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: The columns of ``exclusions.csv``.
EXCLUSION_COLUMNS = ("participant", "prolific_pid", "participant_status", "reason", "n_main_trials",
                     "catch_accuracy", "fast_fraction", "not_fullscreen_fraction", "blurred_fraction")


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


def _fullscreen_required(base: "pd.DataFrame", out: "pd.DataFrame") -> "pd.Series":
    """Per participant: did the page require fullscreen? A study that only recommended it (or did not ask)
    let people answer outside it, so the fullscreen rule must not exclude them; exports that do not say
    (no ``fullscreen_mode``) are held to the rule."""
    import pandas as pd

    if "fullscreen_mode" not in base:
        return pd.Series(True, index=out.index)
    mode = base["fullscreen_mode"].reindex(out.index).astype("string")
    return (mode.isna() | (mode == "required")).astype(bool)


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
