"""The statistics of the study, one import for every family of tests.

Every function takes the trial-level export (as returned by
:func:`analysis.load_export`, usually after :func:`apply_exclusions`) and returns a
new :class:`pandas.DataFrame`; nothing is modified in place. Main trials are the
only ones that count for bias; practice trials never count; catch trials only
measure attention. The formulas are in ``docs/analysis.md``. Each family lives in
its own module: :mod:`analysis.exclusions`, :mod:`analysis.bias` (against chance),
:mod:`analysis.checks` (side, response times, catch), :mod:`analysis.mixed` (the
mixed models); the helpers they share are in :mod:`analysis.common`.
"""
from __future__ import annotations

from .bias import (BIAS_BY_EPS_COLUMNS, bias_by_condition, bias_by_eps, one_sample_tests, participant_means,
                   perceptual_bias, ttests)
from .checks import catch_accuracy, participant_rt, rt_by_eps, side_bias
from .exclusions import EXCLUSION_COLUMNS, apply_exclusions, exclusion_counts, participant_summary
from .mixed import MIXED_MODEL_COLUMNS, mixed_model

__all__ = ["BIAS_BY_EPS_COLUMNS", "EXCLUSION_COLUMNS", "MIXED_MODEL_COLUMNS", "apply_exclusions", "bias_by_condition",
           "bias_by_eps", "catch_accuracy", "exclusion_counts", "mixed_model", "one_sample_tests", "participant_means",
           "participant_rt", "participant_summary", "perceptual_bias", "rt_by_eps", "side_bias", "ttests"]
