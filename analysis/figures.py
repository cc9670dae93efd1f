"""The report's figures: PNG and SVG side by side, deterministic (no dates in the files)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from advbias.trials import LABELS, MAIN_TRIAL_TYPES

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: How the figures name each trial type (the labels belong to :mod:`advbias.trials`).
CONDITION_LABELS = LABELS
_CONDITION_LABELS = CONDITION_LABELS
#: One colour per trial type, by its place in the canonical order (colour-blind-distinguishable first).
_PALETTE = ("#1b6ca8", "#d1495b", "#2e933c", "#8f6593", "#e08e0b", "#4d4d4d", "#17becf", "#a0522d")
_COLORS = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(MAIN_TRIAL_TYPES)}


def _save(fig: Any, folder: Path, name: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for ext in ("png", "svg"):
        path = folder / f"{name}.{ext}"
        metadata = {"Date": None} if ext == "svg" else {"Software": None}
        fig.savefig(path, dpi=150 if ext == "png" else None, bbox_inches="tight", metadata=metadata)
        paths[ext] = path
    return paths


def _error_bars(y: np.ndarray, low: "pd.Series", high: "pd.Series") -> np.ndarray:
    """Error-bar lengths below and above each estimate: the estimate clipped into its interval first.

    No interval (one participant, no variability) draws no bar rather than failing the figure.
    """
    low_a, high_a = low.to_numpy(float), high.to_numpy(float)
    inside = np.clip(y, np.fmin(low_a, y), np.fmax(high_a, y))
    return np.nan_to_num(np.vstack([inside - low_a, high_a - inside]), nan=0.0).clip(min=0.0)


def _eps_axis(ax: Any, levels: list[int]) -> dict[int, float]:
    positions = {e: float(i) for i, e in enumerate(levels)}
    ax.set_xticks(list(positions.values()))
    ax.set_xticklabels([str(e) for e in levels])
    ax.set_xlabel("perturbation budget eps (8-bit levels, L-inf)")
    ax.set_xlim(-0.5, max(len(levels), 1) - 0.5)
    return positions


def _machine_curves(ax: Any, observers: "pd.DataFrame", positions: dict[int, float], conditions: list[str]) -> None:
    """Each machine observer's bias per budget, dashed, in its trial type's colour."""
    styles = ["--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1))]
    models = list(dict.fromkeys(observers["model"]))
    for (model, condition), rows in observers.groupby(["model", "condition"], sort=False):
        if condition not in conditions:
            continue
        rows = rows[rows["eps"].isin(list(positions))].sort_values("eps")
        if rows.empty:
            continue
        x = np.array([positions[int(e)] for e in rows["eps"]])
        role = rows["role"].iloc[0]
        ax.plot(x, rows["bias"].to_numpy(float), ls=styles[models.index(model) % len(styles)], marker="x", lw=1.1,
                ms=5, color=_COLORS.get(condition, "0.3"), alpha=0.85,
                label=f"{model} ({role.replace('_', '-')}), {condition}")


def figure_bias_by_eps(table: "pd.DataFrame", chance: float, folder: Path,
                       observers: "pd.DataFrame | None" = None) -> dict[str, Path]:
    """Bias vs budget per condition with 95% t-CIs and the chance line (the paper's main figure).

    With ``observers`` (a stimulus set's ``observers.csv``) the machine observers'
    curves are drawn beside the human ones, dashed.
    """
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams["svg.hashsalt"] = "advbias"
    levels = sorted(int(e) for e in table["eps"].unique())
    conditions = list(dict.fromkeys(table["condition"]))
    fig = Figure(figsize=(6.4 if observers is None else 7.6, 4.2))
    ax = fig.add_subplot()
    positions = _eps_axis(ax, levels)
    width = 0.12
    for i, condition in enumerate(conditions):
        rows = table[table["condition"] == condition]
        shift = (i - (len(conditions) - 1) / 2) * width
        x = np.array([positions[int(e)] + shift for e in rows["eps"]])
        y = rows["bias"].to_numpy(float)
        ax.errorbar(x, y, yerr=_error_bars(y, rows["ci_low"], rows["ci_high"]), marker="o", capsize=3, lw=1.5,
                    color=_COLORS.get(condition), label=_CONDITION_LABELS.get(condition, condition)
                    + (" (people)" if observers is not None else ""))
    if observers is not None:
        _machine_curves(ax, observers, positions, conditions)
    ax.axhline(chance, color="0.3", ls="--", lw=1, label=f"chance ({chance:g})")
    ax.set_ylabel("P(chose the image perturbed toward\nthe asked category)")
    ax.set_title("Perceptual bias by budget (mean of participants, 95% CI)"
                 + ("; machines dashed" if observers is not None else ""))
    ax.legend(frameon=False, fontsize=7 if observers is not None else 8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, folder, "bias_by_eps")


def figure_participant_bias(means: "pd.DataFrame", chance: float, folder: Path) -> dict[str, Path]:
    """Per-participant bias per budget, one panel per condition: points (jittered) over box plots."""
    from matplotlib.figure import Figure

    conditions = list(dict.fromkeys(means["condition"]))
    levels = sorted(int(e) for e in means["eps"].unique())
    fig = Figure(figsize=(3.4 * len(conditions) + 0.6, 4.0))
    axes = fig.subplots(1, len(conditions), sharey=True, squeeze=False)[0]
    rng = np.random.default_rng(0)
    for ax, condition in zip(axes, conditions):
        rows = means[means["condition"] == condition]
        positions = _eps_axis(ax, levels)
        data = [rows.loc[rows["eps"] == e, "bias"].to_numpy(float) for e in levels]
        ax.boxplot(data, positions=list(positions.values()), widths=0.5, showfliers=False, manage_ticks=False,
                   medianprops={"color": "black"}, boxprops={"color": "0.4"}, whiskerprops={"color": "0.4"},
                   capprops={"color": "0.4"})
        for e, values in zip(levels, data):
            ax.scatter(positions[e] + rng.uniform(-0.18, 0.18, len(values)), values, s=6, alpha=0.35,
                       color=_COLORS.get(condition, "C0"), linewidths=0)
        ax.axhline(chance, color="0.3", ls="--", lw=1)
        ax.set_title(_CONDITION_LABELS.get(condition, condition), fontsize=9)
        ax.set_xlabel("eps")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("participant's bias")
    fig.suptitle("Per-participant bias (each point: one participant)", fontsize=10)
    return _save(fig, folder, "participant_bias")


def figure_rt_by_eps(table: "pd.DataFrame", folder: Path) -> dict[str, Path]:
    """Mean of participant median RTs by budget and condition, with 95% CIs."""
    from matplotlib.figure import Figure

    levels = sorted(int(e) for e in table["eps"].unique())
    conditions = list(dict.fromkeys(table["condition"]))
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    positions = _eps_axis(ax, levels)
    if table.empty:
        ax.text(0.5, 0.5, "no response times recorded", ha="center", va="center", transform=ax.transAxes)
    for i, condition in enumerate(conditions):
        rows = table[table["condition"] == condition]
        shift = (i - (len(conditions) - 1) / 2) * 0.12
        x = np.array([positions[int(e)] + shift for e in rows["eps"]])
        y = rows["median_rt_ms"].to_numpy(float)
        ax.errorbar(x, y, yerr=_error_bars(y, rows["ci_low"], rows["ci_high"]), marker="s", capsize=3, lw=1.2,
                    color=_COLORS.get(condition), label=_CONDITION_LABELS.get(condition, condition))
    ax.set_ylabel("response time (ms, mean of participant medians)")
    ax.set_title("Response time by budget (95% CI)")
    if not table.empty:
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, folder, "rt_by_eps")




def figure_bias_by_image(items: "pd.DataFrame", chance: float, folder: Path) -> dict[str, Path]:
    """Item level: each image pair's bias over all budgets (Wilson CI), sorted, one panel per trial type."""
    from matplotlib.figure import Figure

    from .common import wilson_ci

    # Intervals from the integer counts, never from a float share: an image chosen every time sits exactly at 1.
    pooled = (items.groupby(["condition", "source"], sort=False)[["successes", "n_trials"]].sum().reset_index())
    pooled["bias"] = pooled["successes"] / pooled["n_trials"]
    pooled["ci_low"], pooled["ci_high"] = wilson_ci(pooled["successes"].to_numpy(), pooled["n_trials"].to_numpy())
    conditions = list(dict.fromkeys(pooled["condition"]))
    fig = Figure(figsize=(3.6 * len(conditions) + 0.6, 4.0))
    axes = fig.subplots(1, len(conditions), sharey=True, squeeze=False)[0]
    for ax, condition in zip(axes, conditions):
        rows = pooled[pooled["condition"] == condition].sort_values("bias").reset_index(drop=True)
        y = rows["bias"].to_numpy(float)
        ax.errorbar(np.arange(len(rows)), y, yerr=_error_bars(y, rows["ci_low"], rows["ci_high"]), fmt="o", ms=3,
                    lw=0.8, capsize=0,
                    color=_COLORS.get(condition, "C0"))
        ax.axhline(chance, color="0.3", ls="--", lw=1)
        ax.set_title(_CONDITION_LABELS.get(condition, condition), fontsize=9)
        ax.set_xlabel("image (sorted by bias)")
        ax.set_xticks([])
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("share of choices of the target image")
    fig.suptitle("Bias per image, all budgets (95% Wilson CI)", fontsize=10)
    return _save(fig, folder, "bias_by_image")
