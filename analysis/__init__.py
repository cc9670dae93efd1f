"""Analysis of perceptual-bias experiments: tidy tables in, tidy tables out.

The public functions take and return :class:`pandas.DataFrame` objects (in the
spirit of pingouin) and mirror the command line::

    import analysis
    df = analysis.load_export("export.csv")            # validated trial table
    kept, excluded = analysis.apply_exclusions(df, config)
    analysis.perceptual_bias(kept)                      # condition x eps means, t and bootstrap CIs
    analysis.ttests(kept)                               # t, dof, p, p_holm, cohen_d, bf10, Wilcoxon
    analysis.mixed_model(kept)                          # logistic GLMM, crossed random intercepts
    analysis.contrasts(kept); analysis.trend(kept)      # between trial types; per doubling of the budget
    analysis.run_analysis("export.csv", "out/")         # everything, with report.html

Attributes are loaded on first use so that ``import analysis.cli`` (for
``advbias --help``) does not pull in pandas or scipy.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_export": "data", "validate_export": "data", "EXPORT_COLUMNS": "data", "REQUIRED_COLUMNS": "data",
    "AnalysisConfig": "config", "ExclusionRules": "config", "load_config": "config",
    "participant_summary": "exclusions", "apply_exclusions": "exclusions", "exclusion_counts": "exclusions",
    "participant_means": "bias", "perceptual_bias": "bias", "ttests": "bias", "bias_by_eps": "bias",
    "bias_by_condition": "bias", "mixed_model": "mixed", "side_bias": "checks", "rt_by_eps": "checks",
    "participant_rt": "checks", "catch_accuracy": "checks", "one_sample_tests": "bias",
    "fit_logistic_glmm": "glmm", "GLMMResult": "glmm",
    "analyze": "report", "run_analysis": "run",
    "contrasts": "effects", "trend": "effects", "cohen_d_ci": "common", "holm": "common", "wilson_ci": "common",
    "bias_by_image": "items", "bias_by_category": "items", "bias_by_half": "items",
    "primary_analysis": "primary", "design_power": "power", "read_observers": "observers",
    "human_vs_machine": "observers",
    "simulate_export": "simulation", "simulate_trials": "simulation", "parse_bias": "simulation",
    "power_analysis": "power", "simulate_study": "participants",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
