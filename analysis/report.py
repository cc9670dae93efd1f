"""The full analysis of one export: tables, figures and a self-contained report.

:func:`run_analysis` is what ``advbias analyze`` runs. It writes into ``out``::

    report.html             self-contained (figures embedded as PNG data URIs)
    report.md               the same content, figures linked
    primary.csv             the declared primary analysis, Holm over its family (reported first)
    bias_by_eps.csv         condition x eps: bias, CIs, t-test, Wilcoxon, Holm, d with its CI, BF10
    bias_by_condition.csv   condition, all budgets together
    contrasts.csv           paired differences between trial types per budget and pooled; GLMM interaction
    trend.csv               change in log-odds per doubling of the budget; monotonicity of cell means
    bias_by_image.csv       per image pair, trial type and budget (Wilson CIs)
    bias_by_category.csv    per asked category, and the asymmetry between categories
    bias_by_half.csv        first vs second half of each participant's main trials
    participant_bias.csv    participant x condition x eps means (the points of the figures)
    mixed_model.csv         logistic mixed models (log-odds scale, odds ratios, probabilities)
    mixed_model_fits.csv    one row per fitted model: sizes, deviance, SDs, Wald test across budgets
    human_vs_machine.csv    with --observers: each machine observer beside the people
    bias_by_model_set.csv, model_set_contrasts.csv, mixed_model_by_model_set.csv,
    human_vs_machine_by_model_set.csv   with several model sets (analysis/model_sets.py)
    exclusions.csv          every excluded participant with the reason(s)
    exclusion_counts.csv    participants removed per rule, trials dropped by the RT window
    participants.csv        every participant: status, catch accuracy, fast/fullscreen/blur/server-timing checks
    side_bias.csv           share of "left" answers vs 0.5
    rt_by_eps.csv           participant median RTs by condition x eps
    warnings.csv            plain-language warnings: estimates not available and why (also on stderr)
    provenance.json         input checksum, settings, software versions
    figures/*.png|svg       bias vs budget (with machines), per participant, per image, RT by budget
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from advbias.errors import CLIError
from advbias.setdir import SET_JSON_NAME
from advbias.trials import MAIN_TRIAL_TYPES as ORDER

from .config import AnalysisConfig, as_config
from .document import Doc, fmt, fmt_p, sha256, versions
from .figures import CONDITION_LABELS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


class NothingLeftError(CLIError):
    """The exclusions left no main trial: the partial tables say who was excluded by which rule."""

    def __init__(self, message: str, tables: Mapping[str, "pd.DataFrame"]) -> None:
        super().__init__(message)
        self.tables = dict(tables)


# --------------------------------------------------------------------------- the tables
def analyze(df: "pd.DataFrame", config: AnalysisConfig | Mapping[str, Any] | str | Path | None = None,
            progress: bool = False, observers: "pd.DataFrame | None" = None) -> dict[str, "pd.DataFrame"]:
    """Every table of the analysis, computed from a validated export in memory (nothing written)."""
    from tqdm.auto import tqdm

    from . import effects, items, stats
    from .primary import primary_analysis

    config = as_config(config)  # the one place a path or a dict becomes settings (run_analysis passes settings)
    steps = ["exclusions", "bias", "checks", "items"] + (["mixed models"] if config.mixed_model else []) + [
        "contrasts", "trend"]
    bar = tqdm(total=len(steps), desc="analysis", disable=not progress, unit="step")
    summary = stats.participant_summary(df, config.exclusions)
    kept, excluded = stats.apply_exclusions(df, config)
    tables: dict[str, "pd.DataFrame"] = {
        "participants": summary, "exclusions": excluded,
        "exclusion_counts": stats.exclusion_counts(summary, kept.attrs.get("rt_excluded_trials", 0)),
    }
    bar.update()
    if not ((kept["kind"] == "main") & (kept["condition"] != "catch")).any():
        bar.close()
        raise NothingLeftError("no main trials left after exclusions", tables)
    tables["participant_bias"] = stats.participant_means(kept)
    tables["bias_by_eps"] = stats.bias_by_eps(kept, config)
    tables["bias_by_condition"] = stats.bias_by_condition(kept, config)
    bar.update()
    tables["side_bias"] = stats.side_bias(kept, config)
    tables["rt_by_eps"] = stats.rt_by_eps(kept, config)
    bar.update()
    tables["bias_by_image"] = items.bias_by_image(kept, config)
    tables["bias_by_category"] = items.bias_by_category(kept, config)
    tables["bias_by_half"] = items.bias_by_half(kept, config)
    bar.update()
    if config.mixed_model:
        tables["mixed_model"], tables["mixed_model_fits"] = stats.mixed_model(kept, config, fits=True)
        bar.update()
    tables["primary"] = primary_analysis(tables, config)
    tables["contrasts"] = effects.contrasts(kept, config)
    bar.update()
    tables["trend"] = effects.trend(kept, config)
    bar.update()
    if observers is not None:
        from .observers import human_vs_machine

        tables["human_vs_machine"] = human_vs_machine(tables["bias_by_eps"], observers)
    from .model_sets import model_set_tables

    tables.update(model_set_tables(kept, config, observers))
    from .caveats import caveats

    tables["warnings"] = caveats(tables)
    bar.close()
    return tables


# --------------------------------------------------------------------------- the report's sections
def _level(config: AnalysisConfig) -> int:
    return int(round(config.ci_level * 100))


def _primary_section(doc: Doc, tables: Mapping[str, "pd.DataFrame"], config: AnalysisConfig, registration: str) -> None:
    primary = tables["primary"]
    doc.heading("Primary analysis")
    sided = "one-sided (bias above chance)" if config.alternative == "greater" else "two-sided"
    doc.para(registration)
    doc.para(f"The declared test (`[analysis] primary = \"{config.primary}\"`, "
             f"`alternative = \"{config.alternative}\"`): the overall bias of each trial type by the "
             f"{primary['test'].iloc[0] if len(primary) else config.primary}, {sided}, with Holm's correction over "
             f"the {len(primary)} trial type(s). The estimate is on the {primary['scale'].iloc[0] if len(primary) else ''} "
             f"scale; bias is the same on the probability scale (for the mixed model: a typical participant and "
             f"image).")
    doc.table(primary[["condition", "estimate", "ci_low", "ci_high", "statistic", "dof", "p", "p_holm", "bias",
                       "bias_ci_low", "bias_ci_high", "n_participants"]], "primary.csv")
    for note in primary["note"].dropna().unique():
        doc.para(f"Note: {note}.", note=True)


def _headlines(tables: Mapping[str, "pd.DataFrame"], config: AnalysisConfig) -> list[str]:
    level = _level(config)
    lines = []
    for row in tables["bias_by_condition"].itertuples(index=False):
        text = (f"**{row.condition}** ({CONDITION_LABELS.get(row.condition, row.condition)}): bias {row.bias:.3f} over "
                f"{row.n_participants} participant(s) and {row.n_trials} trials")
        if row.ci_low == row.ci_low:  # an interval needs two participants
            text += f", {level}% CI [{row.ci_low:.3f}, {row.ci_high:.3f}]"
        if row.t == row.t:
            text += (f"; t({fmt(row.dof)}) = {row.t:.2f}, p {fmt_p(row.p)}, d = {row.cohen_d:.2f} "
                     f"[{fmt(row.cohen_d_ci_low)}, {fmt(row.cohen_d_ci_high)}], BF10 = {fmt(row.bf10)}.")
        else:
            text += ("; no t-test (one participant)." if row.n_participants < 2 else
                     "; no t-test (every participant has the same bias).")
        lines.append(text)
    return lines


def _writeup_section(doc: Doc, df: "pd.DataFrame", tables: Mapping[str, "pd.DataFrame"], config: AnalysisConfig,
                     set_info: Mapping[str, Any] | None, context: Mapping[str, Any]) -> None:
    from .writeup import methods, results

    doc.heading("Methods and Results (ready to paste)")
    doc.para(f"Generated from the stimulus set's {SET_JSON_NAME}, the export and the tables of this report; every number "
             "is the one in the tables.", note=True)
    doc.heading("Methods", level=3)
    for paragraph in methods(df, tables, config, set_info, context):
        doc.para(paragraph)
    doc.heading("Results", level=3)
    for paragraph in results(tables, config):
        doc.para(paragraph)


def _exclusions_section(doc: Doc, tables: Mapping[str, "pd.DataFrame"], config: AnalysisConfig) -> None:
    doc.heading("Exclusions")
    rules = config.exclusions
    doc.para(
        f"Rules stated in advance: catch accuracy >= {rules.min_catch_accuracy:g}; "
        f"responses faster than {rules.min_rt_ms:g} ms dropped"
        + (f" and slower than {rules.max_rt_ms:g} ms dropped" if rules.max_rt_ms else "")
        + f"; participants with more than {rules.max_fast_fraction:g} of such fast responses excluded; "
        f"{'only completed participants kept' if rules.require_completed else 'incomplete participants kept'}; "
        f"not fullscreen on more than {rules.max_not_fullscreen_fraction:g} of trials or the window blurred on more "
        f"than {rules.max_blurred_fraction:g} of trials excluded; median server-side answer time below "
        f"{rules.min_median_server_rt_ms:g} ms, or rt_ms above the server-side time by more than "
        f"{rules.server_rt_slack_ms:g} ms on more than {rules.max_rt_over_server_fraction:g} of trials, excluded. "
        f"Practice trials never count.")
    summary = tables["participants"]
    if summary["median_server_rt_ms"].isna().all():
        doc.para("Note: the export has no `server_rt_ms` column (or it is empty): the server-timing rules were "
                 "skipped.", note=True)
    doc.table(tables["exclusion_counts"], "exclusion_counts.csv")
    if len(tables["exclusions"]):
        doc.table(tables["exclusions"].head(50), "exclusions.csv")
    catch = summary["catch_accuracy"].dropna()
    if len(catch):
        doc.para(f"Catch accuracy (all participants, before exclusions): mean {catch.mean():.3f}, "
                 f"median {catch.median():.3f}, min {catch.min():.3f}; "
                 f"{int((catch < rules.min_catch_accuracy).sum())} below {rules.min_catch_accuracy:g}.")


def _bias_section(doc: Doc, tables: Mapping[str, "pd.DataFrame"], config: AnalysisConfig,
                  figures: Mapping[str, Any]) -> None:
    level = _level(config)
    doc.heading("Bias by budget")
    doc.para(f"Per condition and budget: the mean of participant means with a {level}% Student-t CI and a "
             f"percentile bootstrap CI ({config.n_boot} resamples of participants, seed {config.seed}); a one-sample "
             f"t-test against {config.chance:g} (Cohen's d with its exact {level}% CI from the noncentral t, JZS "
             f"Bayes factor BF10 with r = 0.707), a Wilcoxon signed-rank test, and Holm's correction across the "
             f"budgets of each condition.")
    view = tables["bias_by_eps"][["condition", "eps", "n_participants", "bias", "ci_low", "ci_high", "t", "dof",
                                  "p_holm", "cohen_d", "bf10", "wilcoxon_p_holm"]]
    doc.table(view, "bias_by_eps.csv")
    doc.para("The full table adds the trial counts, the bootstrap interval, uncorrected p-values and the interval "
             "of Cohen's d.", note=True)
    doc.para("All budgets together (participant means over every main trial of the condition):")
    doc.table(tables["bias_by_condition"][["condition", "n_participants", "n_trials", "bias", "ci_low", "ci_high",
                                           "t", "dof", "p", "cohen_d", "bf10"]], "bias_by_condition.csv")
    doc.figure(figures["participants"], "Per-participant bias by budget (points: participants; boxes: quartiles).")


def _effects_section(doc: Doc, tables: Mapping[str, "pd.DataFrame"], config: AnalysisConfig) -> None:
    doc.heading("Contrasts between trial types")
    doc.para(f"Each pair of trial types present, the earlier minus the later in the order {', '.join(ORDER)}. "
             "`paired t`: the mean over participants of the difference of their means (probability "
             "scale), per budget (Holm across budgets) and over all budgets (Holm across pairs), with Cohen's d_z "
             "and its exact CI. `glmm`: the log-odds difference from one cell-means mixed model of both trial types; "
             "the `interaction` row is the Wald test that the difference is the same at every budget.")
    contrasts = tables["contrasts"]
    if len(contrasts):
        doc.table(contrasts[["condition", "baseline", "eps", "method", "n_participants", "diff", "ci_low", "ci_high",
                             "t", "dof", "p_holm", "cohen_dz", "chi2", "chi2_df"]], "contrasts.csv")
    else:
        doc.para("Only one trial type in the export: no contrasts.", note=True)
    doc.heading("Dose-response")
    trend = tables["trend"]
    random_slope = "an uncorrelated random slope of log2(eps) by participant when it can be estimated" \
        if config.random_slope else "random intercepts for participants and images"
    doc.para(f"Per trial type, `y ~ 1 + log2(eps)` with {random_slope}: `slope` is the change in log-odds per "
             "doubling of the budget. `monotone`: the cell means never decrease from one budget to the next.")
    doc.table(trend[["condition", "slope", "ci_low", "ci_high", "z", "p", "n_participants", "n_eps", "monotone",
                     "n_decreases"]], "trend.csv")
    for row in trend[trend["note"].notna()].itertuples(index=False):
        doc.para(f"Note: {row.condition}: {row.note}.", note=True)


def _items_section(doc: Doc, tables: Mapping[str, "pd.DataFrame"], figures: Mapping[str, Any]) -> None:
    doc.heading("Images, asked category, time in the session")
    doc.figure(figures["images"], "Bias per image over all budgets, sorted (Wilson CIs); the full table per budget "
                                  "is bias_by_image.csv.")
    items = tables["bias_by_image"]
    doc.para(f"{items['source'].nunique()} images; the 10 lowest and 10 highest image x budget cells of the first "
             f"trial type:", note=True)
    first = items[items["condition"] == items["condition"].iloc[0]].sort_values("bias")[
        ["source", "condition", "eps", "n_trials", "successes", "bias", "ci_low", "ci_high"]]
    doc.table(first.head(10) if len(first) <= 20 else first.iloc[list(range(10)) + list(range(-10, 0))],
              "bias_by_image.csv")
    doc.para("By asked category (mean of participant means; the difference row is paired, tested against 0):")
    doc.table(tables["bias_by_category"], "bias_by_category.csv")
    doc.para("First vs second half of each participant's main trials:")
    doc.table(tables["bias_by_half"], "bias_by_half.csv")


def _mixed_section(doc: Doc, tables: Mapping[str, "pd.DataFrame"], config: AnalysisConfig) -> None:
    doc.heading("Mixed-effects logistic regression")
    doc.para("Per condition, `chose_question_target ~ 1 + (1|participant) + (1|source)` (overall bias) and "
             "`~ 0 + factor(eps) + (1|participant) + (1|source)` (one log-odds per budget, tested against 0 = "
             "chance, Holm-adjusted), fitted by maximum likelihood with the Laplace approximation"
             f"{' (joint-mode variant)' if config.nagq == 0 else ''}. Estimates are log-odds for a typical "
             "participant and image; odds ratios and probabilities are their transforms; Wald z tests and "
             f"{_level(config)}% CIs. A budget whose answers are all the same (complete separation) is estimated "
             "with a Jeffreys prior on that term alone and marked in `note`; the other budgets keep their maximum "
             "likelihood estimates.")
    mm = tables["mixed_model"]
    fixed = mm[mm["effect"] == "fixed"].reindex(columns=["condition", "model", "term", "estimate", "std_err", "z",
                                                         "p_holm", "ci_low", "ci_high", "odds_ratio", "prob"])
    doc.table(fixed, "mixed_model.csv")
    fits = tables["mixed_model_fits"]
    cols = [c for c in ("condition", "model", "n_obs", "n_participants", "n_images", "sd_participant", "sd_source",
                        "deviance", "aic", "wald_chi2_equal_eps", "wald_df", "wald_p", "singular", "converged")
            if c in fits.columns]
    doc.table(fits[cols], "mixed_model_fits.csv")
    for row in fits[fits["note"].notna()].itertuples(index=False):
        doc.para(f"Note: {row.condition}, {row.model} model: {row.note}.", note=True)
    if fits["singular"].fillna(False).astype(bool).any() or not fits["converged"].fillna(False).all():
        doc.para("Note: a random-effect SD estimated at zero (singular fit) or a non-converged fit is flagged "
                 "above; the fixed effects remain valid but the model is simpler than specified.", note=True)


def _machines_section(doc: Doc, tables: Mapping[str, "pd.DataFrame"], observers_name: str) -> None:
    doc.heading("People and machine observers")
    doc.para(f"Machine observers from `{observers_name}`: each model answers every trial as a participant does "
             "(the image with the higher probability of the asked category); `held_out` models were not attacked "
             "(transfer), `attacked` ones are the ceiling. People: the mean of participant means (bias_by_eps.csv).")
    table = tables["human_vs_machine"]
    if len(table):
        doc.table(table, "human_vs_machine.csv")
    else:
        doc.para("No trial type and budget is shared by the people and the observers file.", note=True)


def _checks_section(doc: Doc, tables: Mapping[str, "pd.DataFrame"], config: AnalysisConfig,
                    figures: Mapping[str, Any]) -> None:
    doc.heading("Checks")
    doc.para("Side bias: share of \"left\" answers (participant means) against 0.5. The target side is "
             "counterbalanced, so a side preference adds noise but not bias.")
    doc.table(tables["side_bias"], "side_bias.csv")
    doc.para("Response times: mean of participant median RTs.")
    doc.table(tables["rt_by_eps"], "rt_by_eps.csv")
    doc.figure(figures["rt"], f"Response time by budget ({_level(config)}% CIs).")


# --------------------------------------------------------------------------- the document
def figures_for(tables: Mapping[str, "pd.DataFrame"], config: AnalysisConfig, folder: Path,
                observers: "pd.DataFrame | None") -> dict[str, Any]:
    """Every figure of the report, written into ``folder``."""
    from . import figures

    return {
        "bias": figures.figure_bias_by_eps(tables["bias_by_eps"], config.chance, folder, observers),
        "participants": figures.figure_participant_bias(tables["participant_bias"], config.chance, folder),
        "images": figures.figure_bias_by_image(tables["bias_by_image"], config.chance, folder),
        "rt": figures.figure_rt_by_eps(tables["rt_by_eps"], folder),
    }


def _warnings_section(doc: Doc, tables: Mapping[str, "pd.DataFrame"]) -> None:
    found = tables.get("warnings")
    if found is None or not len(found):
        return
    doc.heading("Warnings")
    doc.bullets(list(found["warning"]))


def write_report(out: Path, df: "pd.DataFrame", tables: Mapping[str, "pd.DataFrame"], config: AnalysisConfig,
                 figures: Mapping[str, Any], provenance: Mapping[str, Any], set_info: Mapping[str, Any] | None,
                 context: Mapping[str, Any]) -> None:
    """report.md and report.html; ``context``: the registration statement and the design, for the Methods."""
    doc = Doc(out)
    summary = tables["participants"]
    doc.para(f"Input `{provenance['input']}` (sha256 `{provenance['input_sha256'][:16]}…`, {len(df)} rows, "
             f"{len(summary)} participants; {int((~summary['excluded']).sum())} kept after exclusions). Bias is the "
             f"share of main trials on which the participant chose the image perturbed toward the asked category; "
             f"chance is {config.chance:g}.", note=True)
    _warnings_section(doc, tables)
    _primary_section(doc, tables, config, context["registration"])
    doc.heading("Summary")
    doc.bullets(_headlines(tables, config))
    doc.figure(figures["bias"], f"Bias by budget per condition: mean of participant means with {_level(config)}% "
                                f"t-CIs; dashed line: chance" + ("; machine observers dashed with crosses."
                                                                if "human_vs_machine" in tables else "."))
    _writeup_section(doc, df, tables, config, set_info, context)
    _exclusions_section(doc, tables, config)
    _bias_section(doc, tables, config, figures)
    _effects_section(doc, tables, config)
    _items_section(doc, tables, figures)
    if "mixed_model" in tables:
        _mixed_section(doc, tables, config)
    if "human_vs_machine" in tables:
        _machines_section(doc, tables, Path(str(provenance["observers"])).name)
    from .model_sets import model_set_section

    model_set_section(doc, tables)
    _checks_section(doc, tables, config, figures)
    doc.heading("Settings and software")
    doc.para("`" + json.dumps(provenance["settings"], sort_keys=True) + "`", note=True)
    doc.para("; ".join(f"{k} {v}" for k, v in provenance["versions"].items()), note=True)
    doc.write("Perceptual bias analysis")
