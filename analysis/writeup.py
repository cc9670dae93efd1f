"""Methods and Results paragraphs, every number filled in from the data, ready to paste.

The stimuli come from the stimulus set's ``set.json`` (``advbias analyze --set``),
the design from the export, the analysis from the settings and the tables. Nothing
is written that the inputs do not say: without ``set.json`` the stimulus sentence
says so instead of guessing.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from advbias.setdir import SET_JSON_NAME, read_set_json

from .config import AnalysisConfig
from .figures import CONDITION_LABELS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def read_set(path: str | Path) -> dict[str, Any]:
    """``set.json`` of a stimulus set (the folder or the file itself), checked by its owner."""
    return read_set_json(Path(path))


def _p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "p n/a"
    return "p < .001" if p < 0.001 else f"p = {p:.3f}".replace("0.", ".", 1)


def _join(items: list[str]) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _stimuli(set_info: Mapping[str, Any] | None) -> str:
    if not set_info:
        return (f"Stimuli: the stimulus set's {SET_JSON_NAME} was not given (advbias analyze --set), so its parameters "
                "are not restated here.")
    par, attack = set_info.get("parameters", {}), set_info.get("attack", {})
    counts = set_info.get("counts", {})
    pairs = [p.replace(":", " and ") for p in par.get("pairs", [])]
    models = [m.get("name", "?") for m in set_info.get("models", [])] or par.get("models", [])
    holdout = [m.get("name", "?") for m in set_info.get("holdout_models", [])] or par.get("holdout", [])
    text = (f"Stimuli: {counts.get('sources', '?')} photographs ({par.get('size', '?')} x {par.get('size', '?')} px) "
            f"were perturbed toward each category of the pair(s) {_join(pairs) if pairs else '?'} by targeted "
            f"L-infinity projected gradient descent ({par.get('steps', '?')} step{'' if par.get('steps') == 1 else 's'}, "
            f"{attack.get('loss', '?')} loss, "
            f"momentum {attack.get('momentum', 0)}, input diversity {attack.get('input_diversity', 0)}) on an "
            f"ensemble of {_join(models) if models else '?'}, at budgets eps = "
            f"{_join([f'{e}/255' for e in par.get('eps', [])]) or '?'}")
    if holdout:
        text += f"; {_join(holdout)} was held out to measure transfer"
    controls = par.get("controls", [])
    return text + (f". Controls: the {_join(controls)} version of each perturbation at the same budget." if controls
                   else ".")


def _sides_and_lists(df: "pd.DataFrame", design: Mapping[str, Any] | None) -> str:
    """How sides, lists and order were set: the design counterbalances, only the order is random."""
    lists = design.get("lists") if design else None
    if lists is None and "list" in df.columns and df["list"].notna().any():
        lists = f"{int(df['list'].nunique())} (seen in the export)"
    text = ("The side of the image perturbed toward the asked category was counterbalanced, not drawn at random: "
            "within each trial type and budget it was on the left on half of the trials, and every list has a "
            "mirror list with all sides swapped")
    text += (f"; participants were assigned in turn to {lists} counterbalancing list(s) (side mirror, Latin-square "
             "rotation of photos over cells, photo window)" if lists else "")
    return text + ("; the order of main and catch trials (practice first) was randomised per participant from "
                   "the participant's seed.")


def _design(df: "pd.DataFrame", tables: Mapping[str, "pd.DataFrame"], design: Mapping[str, Any] | None = None) -> str:
    summary = tables["participants"]
    kept = summary[~summary["excluded"]]
    reasons = tables["exclusion_counts"]
    named = reasons[~reasons["reason"].isin(["participants (all)", "excluded (any reason)", "kept",
                                             "main trials outside the RT window (dropped)"])]
    why = "; ".join(f"{r.reason}: {int(r.n_participants)}" for r in named.itertuples(index=False))
    main = df[df["kind"] == "main"]
    types = [c for c in CONDITION_LABELS if c in set(main["condition"])]
    eps = sorted(int(e) for e in main["eps"].unique())
    per = lambda kind: int(np.median(df[df["kind"] == kind].groupby("participant").size() if (df["kind"] == kind)  # noqa: E731
                                     .any() else [0]))
    return (f"Design: {len(summary)} participants took part and {len(kept)} were analysed after the exclusions "
            f"stated in advance ({why or 'none excluded'}). Each answered a median of {per('main')} main trials "
            f"({_join([f'{CONDITION_LABELS[t]} ({t})' for t in types]) if types else 'none'}; budgets "
            f"{_join([str(e) for e in eps]) if eps else 'none'}), "
            f"{per('catch')} catch trials and {per('practice')} practice trials. On each trial two images were "
            f"shown side by side and the participant chose the one that looked more like the asked category. "
            + _sides_and_lists(df, design))


def _analysis(config: AnalysisConfig, tables: Mapping[str, "pd.DataFrame"], registration: str | None) -> str:
    level = int(round(config.ci_level * 100))
    primary = tables["primary"]
    test = primary["test"].iloc[0] if len(primary) else config.primary
    sided = "one-sided (bias above chance)" if config.alternative == "greater" else "two-sided"
    return (f"Analysis: {registration or 'the settings were not preregistered.'} The primary test was the {test} "
            f"for each of the "
            f"{len(primary)} trial type(s), {sided}, Holm-adjusted across them; the mixed model "
            f"(y ~ 1 + (1|participant) + (1|source), Laplace maximum likelihood; Wald statistic referred to a t "
            f"distribution on min(participants, images) - 1 degrees of freedom) generalises over participants and "
            f"images. Secondary analyses: per-budget one-sample t-tests of participant means against "
            f"{config.chance:g} (Holm across budgets), paired contrasts between trial types, the change in log-odds "
            f"per doubling of the budget, and bias per image, asked category and half of the session. Intervals "
            f"are {level}%.")


def methods(df: "pd.DataFrame", tables: Mapping[str, "pd.DataFrame"], config: AnalysisConfig,
            set_info: Mapping[str, Any] | None = None, context: Mapping[str, Any] | None = None) -> list[str]:
    """The Methods paragraphs: stimuli, design, analysis (``context``: registration statement, design summary)."""
    context = context or {}
    return [_stimuli(set_info), _design(df, tables, context.get("design")),
            _analysis(config, tables, context.get("registration"))]


def _primary_sentence(row: Any, by_condition: "pd.DataFrame", level: int) -> str:
    means = by_condition[by_condition["condition"] == row.condition]
    label = CONDITION_LABELS.get(row.condition, row.condition)
    text = f"{label[:1].upper() + label[1:]} ({row.condition}): "
    if len(means):
        m = means.iloc[0]
        interval = f"{level}% CI {m.ci_low:.1%} to {m.ci_high:.1%}, " if np.isfinite(m.ci_low) else ""
        text += (f"participants chose the image perturbed toward the asked category on {m.bias:.1%} of trials "
                 f"(mean of participant means, {interval}n = {int(m.n_participants)}); ")
    if not np.isfinite(row.statistic):
        return text + f"the primary test is not available ({row.test} needs more participants, images or variability)."
    if row.scale == "log-odds":
        text += (f"mixed model log-odds {row.estimate:.3f} ({level}% CI {row.ci_low:.3f} to {row.ci_high:.3f}; "
                 f"{row.bias:.1%} for a typical participant and image), t({row.dof:g}) = {row.statistic:.2f}, "
                 f"{_p(row.p)}, Holm {_p(row.p_holm)}.")
    else:
        text += f"t({row.dof:g}) = {row.statistic:.2f}, {_p(row.p)}, Holm {_p(row.p_holm)}."
    return text


def results(tables: Mapping[str, "pd.DataFrame"], config: AnalysisConfig) -> list[str]:
    """The Results paragraphs: the primary family, the dose-response, the contrasts, machines if given."""
    level = int(round(config.ci_level * 100))
    out = [" ".join(_primary_sentence(r, tables["bias_by_condition"], level)
                    for r in tables["primary"].itertuples(index=False) if np.isfinite(r.estimate))]
    trend = tables.get("trend")
    if trend is not None and (trend["slope"].notna() & trend["z"].notna()).any():
        parts = [f"{r.condition}: {r.slope:+.3f} log-odds per doubling ({level}% CI {r.ci_low:.3f} to "
                 f"{r.ci_high:.3f}, z = {r.z:.2f}, {_p(r.p)}; cell means "
                 f"{'monotone' if r.monotone else f'not monotone ({r.n_decreases} decrease(s))'})"
                 for r in trend.itertuples(index=False) if np.isfinite(r.slope) and np.isfinite(r.z)]
        out.append("Dose-response: " + "; ".join(parts) + ".")
    contrasts = tables.get("contrasts")
    if contrasts is not None and len(contrasts):
        pooled = contrasts[(contrasts["method"] == "paired t") & (contrasts["eps"] == "all") & contrasts["t"].notna()]
        parts = [f"{r.condition} minus {r.baseline}: {r.diff:+.3f} ({level}% CI {r.ci_low:.3f} to {r.ci_high:.3f}), "
                 f"t({r.dof:g}) = {r.t:.2f}, Holm {_p(r.p_holm)}, d_z = {r.cohen_dz:.2f} ({level}% CI "
                 f"{r.dz_ci_low:.2f} to {r.dz_ci_high:.2f})" for r in pooled.itertuples(index=False)]
        if parts:
            out.append("Contrasts between trial types (paired differences of participant means, all budgets): "
                       + "; ".join(parts) + ".")
    machines = tables.get("human_vs_machine")
    if machines is not None and len(machines):
        held = machines[machines["role"] == "held_out"]
        use = held if len(held) else machines
        parts = [f"{r.model} {r.machine_bias:.1%} vs people {r.human_bias:.1%} ({r.condition}, eps {r.eps})"
                 for r in use.itertuples(index=False)]
        out.append("Machine observers (" + ("held-out models" if len(held) else "models") + "): " + "; ".join(parts)
                   + ".")
    return [p for p in out if p and not (isinstance(p, float) and math.isnan(p))]
