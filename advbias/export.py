"""The trial export: the one file between ``experiment`` and ``analysis`` (``docs/export.md``).

This module owns the format: the column names and order, which columns are
integers or floats, and the values of the categorical columns. ``experiment``
writes rows with exactly these columns; ``analysis`` validates a file against
them. One row per answered trial, in the spirit of jsPsych's data.
"""
from __future__ import annotations

from advbias.trials import MAIN_TRIAL_TYPES, TRIAL_TYPES  # noqa: F401  (the ``condition`` values)

#: Column order of the export.
COLUMNS: tuple[str, ...] = (
    "experiment", "participant", "prolific_pid", "study_id", "session_id", "participant_status", "list", "seed",
    "trial_index", "kind", "condition", "question", "question_target", "eps", "model_set", "source", "pair_key",
    "left_stimulus_id", "right_stimulus_id", "left_target", "right_target", "left_condition", "right_condition",
    "target_side", "response", "chosen_target", "chose_question_target", "response_source", "rt_ms",
    "presentation_ms", "onset_frame_ms", "offset_frame_ms", "refresh_hz", "fullscreen", "blurred", "blur_events",
    "fullscreen_mode", "fullscreen_exits", "ignored_keys", "window_width", "window_height", "screen_width",
    "screen_height", "device_pixel_ratio", "image_px", "server_received_at", "server_rt_ms",
)
INT_COLUMNS = ("list", "seed", "trial_index", "eps", "chose_question_target", "fullscreen", "blurred", "blur_events")
#: What the browser measured at each answer: whole numbers, but empty for answers stored before they were
#: measured, so they are typed as numbers that may be missing (written without decimals).
MEASURED_COLUMNS = ("fullscreen_exits", "ignored_keys", "window_width", "window_height", "screen_width",
                    "screen_height", "image_px")
FLOAT_COLUMNS = ("rt_ms", "presentation_ms", "onset_frame_ms", "offset_frame_ms", "refresh_hz", *MEASURED_COLUMNS,
                 "device_pixel_ratio", "server_rt_ms")
#: Columns that hold what a participant's URL sent: a CSV writes them so no spreadsheet runs them as a formula.
UNTRUSTED_TEXT_COLUMNS = ("prolific_pid", "study_id", "session_id")
#: A cell starting with one of these is a formula to a spreadsheet; the CSV prefixes it with ``'``.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

#: The columns the analysis cannot do without; the others are carried along when present.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "participant", "participant_status", "trial_index", "kind", "condition",
    "eps", "source", "target_side", "response", "chose_question_target", "rt_ms",
    "fullscreen", "blurred", "blur_events",
)

#: Values of ``kind``.
KINDS: tuple[str, ...] = ("practice", "main", "catch")
#: Values of ``condition``: ``TRIAL_TYPES``, imported above from :mod:`advbias.trials` (its main trial
#: types: ``targets``, the image perturbed toward the other category beside it; ``vs_X``, the ``X``
#: control; and ``catch``).
#: Values of ``participant_status`` (``void``: set aside by the researcher, exported only on request).
STATUSES: tuple[str, ...] = ("in_progress", "completed", "screened_out", "void")
#: Values of ``fullscreen_mode``: what the page enforced (``required``: trials only in fullscreen).
FULLSCREEN_MODES: tuple[str, ...] = ("required", "recommended", "off")
SIDES: tuple[str, ...] = ("left", "right")
