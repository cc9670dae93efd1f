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
    "participant_summary": "stats", "apply_exclusions": "stats", "exclusion_counts": "stats",
    "participant_means": "stats", "perceptual_bias": "stats", "ttests": "stats", "bias_by_eps": "stats",
    "bias_by_condition": "stats", "mixed_model": "stats", "side_bias": "stats", "rt_by_eps": "stats",
    "participant_rt": "stats", "catch_accuracy": "stats", "one_sample_tests": "stats",
    "fit_logistic_glmm": "glmm", "GLMMResult": "glmm",
    "analyze": "report", "run_analysis": "report",
    "contrasts": "effects", "trend": "effects", "cohen_d_ci": "effects",
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
