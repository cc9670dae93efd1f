"""The full analysis of one export: tables, figures and a self-contained report.

:func:`run_analysis` is what ``advbias analyze`` runs. It writes into ``out``::

    report.html             self-contained (figures embedded as PNG data URIs)
    report.md               the same content, figures linked
    bias_by_eps.csv         condition x eps: bias, CIs, t-test, Wilcoxon, Holm, d, BF10
    bias_by_condition.csv   condition, all budgets together
    participant_bias.csv    participant x condition x eps means (the points of the figures)
    mixed_model.csv         logistic mixed models (log-odds scale, odds ratios, probabilities)
    mixed_model_fits.csv    one row per fitted model: sizes, deviance, SDs, Wald test across budgets
    exclusions.csv          every excluded participant with the reason(s)
    exclusion_counts.csv    participants removed per rule, trials dropped by the RT window
    participants.csv        every participant: status, catch accuracy, fast/fullscreen/blur fractions
    side_bias.csv           share of "left" answers vs 0.5
    rt_by_eps.csv           participant median RTs by condition x eps
    provenance.json         input checksum, settings, software versions
    figures/*.png|svg       bias vs budget, per-participant distribution, RT by budget
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .config import AnalysisConfig, as_config

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

_CONDITION_LABELS = {
    "targets": "A vs B, both perturbed",
    "vs_clean": "perturbed vs clean",
    "vs_flip": "perturbed vs flipped perturbation",
    "vs_noise": "perturbed vs random noise",
}
_COLORS = {"targets": "#1b6ca8", "vs_clean": "#d1495b", "vs_flip": "#2e933c", "vs_noise": "#8f6593"}


# --------------------------------------------------------------------------- formatting
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        if float(value).is_integer() and abs(value) < 1e5:
            return str(int(value))
        return f"{value:.{digits}f}" if abs(value) < 10 else f"{value:.{max(digits - 2, 1)}f}"
    try:
        import pandas as pd

        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return str(value)


def _fmt_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def _markdown_table(frame: "pd.DataFrame") -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _html_table(frame: "pd.DataFrame") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# --------------------------------------------------------------------------- figures
def _save(fig: Any, folder: Path, name: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for ext in ("png", "svg"):
        path = folder / f"{name}.{ext}"
        metadata = {"Date": None} if ext == "svg" else {"Software": None}
        fig.savefig(path, dpi=150 if ext == "png" else None, bbox_inches="tight", metadata=metadata)
        paths[ext] = path
    return paths


def _eps_axis(ax: Any, levels: list[int]) -> dict[int, float]:
    positions = {e: float(i) for i, e in enumerate(levels)}
    ax.set_xticks(list(positions.values()))
    ax.set_xticklabels([str(e) for e in levels])
    ax.set_xlabel("perturbation budget eps (8-bit levels, L-inf)")
    ax.set_xlim(-0.5, len(levels) - 0.5)
    return positions


def figure_bias_by_eps(table: "pd.DataFrame", chance: float, folder: Path) -> dict[str, Path]:
    """Bias vs budget per condition with 95% t-CIs and the chance line (the paper's main figure)."""
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams["svg.hashsalt"] = "advbias"
    levels = sorted(int(e) for e in table["eps"].unique())
    conditions = list(dict.fromkeys(table["condition"]))
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    positions = _eps_axis(ax, levels)
    width = 0.12
    for i, condition in enumerate(conditions):
        rows = table[table["condition"] == condition]
        shift = (i - (len(conditions) - 1) / 2) * width
        x = np.array([positions[int(e)] + shift for e in rows["eps"]])
        y = rows["bias"].to_numpy(float)
        err = np.vstack([y - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - y])
        ax.errorbar(x, y, yerr=np.nan_to_num(err), marker="o", capsize=3, lw=1.5,
                    color=_COLORS.get(condition), label=_CONDITION_LABELS.get(condition, condition))
    ax.axhline(chance, color="0.3", ls="--", lw=1, label=f"chance ({chance:g})")
    ax.set_ylabel("P(chose the image perturbed toward\nthe asked category)")
    ax.set_title("Perceptual bias by budget (mean of participants, 95% CI)")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
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
    for i, condition in enumerate(conditions):
        rows = table[table["condition"] == condition]
        shift = (i - (len(conditions) - 1) / 2) * 0.12
        x = np.array([positions[int(e)] + shift for e in rows["eps"]])
        y = rows["median_rt_ms"].to_numpy(float)
        err = np.vstack([y - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - y])
        ax.errorbar(x, y, yerr=np.nan_to_num(err), marker="s", capsize=3, lw=1.2,
                    color=_COLORS.get(condition), label=_CONDITION_LABELS.get(condition, condition))
    ax.set_ylabel("response time (ms, mean of participant medians)")
    ax.set_title("Response time by budget (95% CI)")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, folder, "rt_by_eps")


# --------------------------------------------------------------------------- report text
def _headlines(by_condition: "pd.DataFrame", mixed: "pd.DataFrame | None", config: AnalysisConfig) -> list[str]:
    level = int(round(config.ci_level * 100))
    lines = []
    for row in by_condition.itertuples(index=False):
        text = (f"**{row.condition}** ({_CONDITION_LABELS.get(row.condition, row.condition)}): bias "
                f"{row.bias:.3f}, {level}% CI [{row.ci_low:.3f}, {row.ci_high:.3f}] over "
                f"{row.n_participants} participants and {row.n_trials} trials; "
                f"t({_fmt(row.dof)}) = {row.t:.2f}, p {_fmt_p(row.p)}, d = {row.cohen_d:.2f}, BF10 = {_fmt(row.bf10)}")
        if mixed is not None and not mixed.empty:
            fixed = mixed[(mixed["condition"] == row.condition) & (mixed["model"] == "intercept")
                          & (mixed["effect"] == "fixed")]
            if len(fixed):
                m = fixed.iloc[0]
                text += (f". Mixed model: odds ratio {m['odds_ratio']:.3f} [{m['or_ci_low']:.3f}, "
                         f"{m['or_ci_high']:.3f}], z = {m['z']:.2f}, p {_fmt_p(m['p'])}")
        lines.append(text + ".")
    return lines


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("advbias", "numpy", "pandas", "scipy", "pingouin", "matplotlib"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45} table{border-collapse:collapse;font-size:12px;margin:0.5em 0 1.5em;display:block;
overflow-x:auto} th,td{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}
th{background:#f2f2f2} td:first-child,th:first-child{text-align:left} img{max-width:100%}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:1.8em}
.note{color:#555;font-size:0.92em} code{background:#f4f4f4;padding:0 3px}
"""


class _Doc:
    """Builds the Markdown and HTML versions of the report side by side."""

    def __init__(self, out: Path):
        self.out = out
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str, note: bool = False) -> None:
        self.md.append(text + "\n")
        rendered = html.escape(text)
        # **bold** and `code` for the HTML side.
        import re

        rendered = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", rendered)
        rendered = re.sub(r"`(.+?)`", r"<code>\1</code>", rendered)
        self.html.append(f'<p class="note">{rendered}</p>' if note else f"<p>{rendered}</p>")

    def bullets(self, items: list[str]) -> None:
        import re

        self.md.append("\n".join(f"- {i}" for i in items) + "\n")
        rendered = [re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(i)) for i in items]
        self.html.append("<ul>" + "".join(f"<li>{i}</li>" for i in rendered) + "</ul>")

    def table(self, frame: "pd.DataFrame", csv_name: str | None = None) -> None:
        self.md.append(_markdown_table(frame) + "\n")
        self.html.append(_html_table(frame))
        if csv_name:
            self.md.append(f"Full table: [{csv_name}]({csv_name})\n")
            self.html.append(f'<p class="note">Full table: <a href="{csv_name}">{csv_name}</a></p>')

    def figure(self, paths: Mapping[str, Path], caption: str) -> None:
        png = paths["png"].relative_to(self.out).as_posix()
        svg = paths["svg"].relative_to(self.out).as_posix()
        self.md.append(f"![{caption}]({png})\n\n*{caption}* ([SVG]({svg}))\n")
        data = base64.b64encode(paths["png"].read_bytes()).decode("ascii")
        self.html.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                         f'<figcaption class="note">{html.escape(caption)} (<a href="{svg}">SVG</a>, '
                         f'<a href="{png}">PNG</a>)</figcaption></figure>')

    def write(self, title: str) -> None:
        (self.out / "report.md").write_text(f"# {title}\n\n" + "\n".join(self.md), encoding="utf-8")
        page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>" + "\n".join(self.html)
                + "</body></html>")
        (self.out / "report.html").write_text(page, encoding="utf-8")


# --------------------------------------------------------------------------- the pipeline
def analyze(df: "pd.DataFrame", config: AnalysisConfig | Mapping[str, Any] | str | Path | None = None,
            progress: bool = False) -> dict[str, "pd.DataFrame"]:
    """Every table of the analysis, computed from a validated export in memory (nothing written)."""
    from tqdm.auto import tqdm

    from . import stats

    config = as_config(config)  # the one place a path or a dict becomes settings (run_analysis passes settings)
    steps = ["exclusions", "bias", "tests", "checks"] + (["mixed models"] if config.mixed_model else [])
    bar = tqdm(total=len(steps), desc="analysis", disable=not progress, unit="step")
    summary = stats.participant_summary(df, config.exclusions)
    kept, excluded = stats.apply_exclusions(df, config)
    tables: dict[str, "pd.DataFrame"] = {
        "participants": summary,
        "exclusions": excluded,
        "exclusion_counts": stats.exclusion_counts(summary, kept.attrs.get("rt_excluded_trials", 0)),
    }
    bar.update()
    if not (kept["kind"] == "main").any():
        raise ValueError("no main trials left after exclusions: check the export and the [exclusions] settings")
    tables["participant_bias"] = stats.participant_means(kept)
    bar.update()
    tables["bias_by_eps"] = stats.bias_by_eps(kept, config)
    tables["bias_by_condition"] = stats.bias_by_condition(kept, config)
    bar.update()
    tables["side_bias"] = stats.side_bias(kept, config)
    tables["rt_by_eps"] = stats.rt_by_eps(kept, config)
    bar.update()
    if config.mixed_model:
        tables["mixed_model"], tables["mixed_model_fits"] = stats.mixed_model(kept, config, fits=True)
        bar.update()
    bar.close()
    return tables


def run_analysis(path: str | Path, out: str | Path,
                 config: AnalysisConfig | Mapping[str, Any] | str | Path | None = None,
                 progress: bool = False) -> dict[str, "pd.DataFrame"]:
    """Analyse the export at ``path`` and write tables, figures and the report into ``out``.

    Returns the tables (name -> DataFrame). Files of a previous run in ``out`` are
    overwritten; nothing else there is touched.
    """
    from .data import load_export

    started = time.perf_counter()
    path, out = Path(path), Path(out)
    config = as_config(config)
    df = load_export(path)
    tables = analyze(df, config, progress=progress)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False)

    figures = out / "figures"
    fig_bias = figure_bias_by_eps(tables["bias_by_eps"], config.chance, figures)
    fig_participants = figure_participant_bias(tables["participant_bias"], config.chance, figures)
    fig_rt = figure_rt_by_eps(tables["rt_by_eps"], figures)

    provenance = {
        "input": path.name,
        "input_sha256": _sha256(path),
        "input_rows": int(len(df)),
        "experiments": sorted(map(str, df["experiment"].dropna().unique())) if "experiment" in df else [],
        "settings": config.to_dict(),
        "versions": _versions(),
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }

    doc = _Doc(out)
    level = int(round(config.ci_level * 100))
    summary = tables["participants"]
    n_all, n_kept = len(summary), int((~summary["excluded"]).sum())
    doc.para(f"Input `{path.name}` (sha256 `{provenance['input_sha256'][:16]}…`, {len(df)} rows, "
             f"{n_all} participants; {n_kept} kept after exclusions). Bias is the share of main trials on which "
             f"the participant chose the image perturbed toward the asked category; chance is {config.chance:g}.",
             note=True)
    doc.heading("Summary")
    doc.bullets(_headlines(tables["bias_by_condition"], tables.get("mixed_model"), config))
    doc.figure(fig_bias, f"Bias by budget per condition: mean of participant means with {level}% t-CIs; "
                         f"dashed line: chance.")

    doc.heading("Exclusions")
    rules = config.exclusions
    doc.para(
        f"Rules stated in advance: catch accuracy >= {rules.min_catch_accuracy:g}; "
        f"responses faster than {rules.min_rt_ms:g} ms dropped"
        + (f" and slower than {rules.max_rt_ms:g} ms dropped" if rules.max_rt_ms else "")
        + f"; participants with more than {rules.max_fast_fraction:g} of such fast responses excluded; "
        f"{'only completed participants kept' if rules.require_completed else 'incomplete participants kept'}; "
        f"not fullscreen on more than {rules.max_not_fullscreen_fraction:g} of trials or the window blurred on more "
        f"than {rules.max_blurred_fraction:g} of trials excluded. Practice trials never count.")
    doc.table(tables["exclusion_counts"], "exclusion_counts.csv")
    if len(tables["exclusions"]):
        doc.table(tables["exclusions"].head(50), "exclusions.csv")
    catch = summary["catch_accuracy"].dropna()
    if len(catch):
        doc.para(f"Catch accuracy (all participants, before exclusions): mean {catch.mean():.3f}, "
                 f"median {catch.median():.3f}, min {catch.min():.3f}; "
                 f"{int((catch < rules.min_catch_accuracy).sum())} below {rules.min_catch_accuracy:g}.")

    doc.heading("Bias by budget")
    doc.para(f"Per condition and budget: the mean of participant means with a {level}% Student-t CI and a "
             f"percentile bootstrap CI ({config.n_boot} resamples of participants, seed {config.seed}); a one-sample "
             f"t-test against {config.chance:g} (Cohen's d, JZS Bayes factor BF10 with r = 0.707), a Wilcoxon "
             f"signed-rank test, and Holm's correction across the budgets of each condition.")
    view = tables["bias_by_eps"][["condition", "eps", "n_participants", "n_trials", "bias", "ci_low", "ci_high",
                                  "boot_ci_low", "boot_ci_high", "t", "dof", "p", "p_holm", "cohen_d", "bf10",
                                  "wilcoxon_p", "wilcoxon_p_holm"]]
    doc.table(view, "bias_by_eps.csv")
    doc.para("All budgets together (participant means over every main trial of the condition):")
    doc.table(tables["bias_by_condition"][["condition", "n_participants", "n_trials", "bias", "ci_low", "ci_high",
                                           "t", "dof", "p", "cohen_d", "bf10", "wilcoxon_p"]],
              "bias_by_condition.csv")
    doc.figure(fig_participants, "Per-participant bias by budget (points: participants; boxes: quartiles).")

    if "mixed_model" in tables:
        doc.heading("Mixed-effects logistic regression")
        doc.para("Per condition, `chose_question_target ~ 1 + (1|participant) + (1|source)` (overall bias) and "
                 "`~ 0 + factor(eps) + (1|participant) + (1|source)` (one log-odds per budget, tested against 0 = "
                 "chance, Holm-adjusted), fitted by maximum likelihood with the Laplace approximation"
                 f"{' (joint-mode variant)' if config.nagq == 0 else ''}. Estimates are log-odds for a typical "
                 "participant and image; odds ratios and probabilities are their transforms; Wald z tests and "
                 f"{level}% CIs.")
        mm = tables["mixed_model"]
        fixed = mm[mm["effect"] == "fixed"][["condition", "model", "term", "estimate", "std_err", "z", "p", "p_holm",
                                             "ci_low", "ci_high", "odds_ratio", "or_ci_low", "or_ci_high", "prob"]]
        doc.table(fixed, "mixed_model.csv")
        fits = tables["mixed_model_fits"]
        cols = [c for c in ("condition", "model", "n_obs", "n_participants", "n_images", "sd_participant",
                            "sd_source", "deviance", "aic", "wald_chi2_equal_eps", "wald_df", "wald_p",
                            "singular", "converged") if c in fits.columns]
        doc.table(fits[cols], "mixed_model_fits.csv")
        if "note" in fits.columns:
            for row in fits[fits["note"].notna()].itertuples(index=False):
                doc.para(f"Note: {row.condition}, {row.model} model: {row.note}.", note=True)
        if fits["singular"].fillna(False).astype(bool).any() or not fits["converged"].all():
            doc.para("Note: a random-effect SD estimated at zero (singular fit) or a non-converged fit is flagged "
                     "above; the fixed effects remain valid but the model is simpler than specified.", note=True)

    doc.heading("Checks")
    doc.para("Side bias: share of \"left\" answers (participant means) against 0.5. The target side is "
             "counterbalanced, so a side preference adds noise but not bias.")
    doc.table(tables["side_bias"], "side_bias.csv")
    doc.para("Response times: mean of participant median RTs.")
    doc.table(tables["rt_by_eps"], "rt_by_eps.csv")
    doc.figure(fig_rt, f"Response time by budget ({level}% CIs).")

    doc.heading("Settings and software")
    doc.para("`" + json.dumps(provenance["settings"], sort_keys=True) + "`", note=True)
    doc.para("; ".join(f"{k} {v}" for k, v in provenance["versions"].items()), note=True)
    provenance["seconds"] = round(time.perf_counter() - started, 3)
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True), encoding="utf-8")
    doc.write("Perceptual bias analysis")
    return tables
