"""The trial export: the one file between ``experiment`` and ``analysis`` (``docs/export.md``).

This module owns the format: the column names and order, which columns are
integers or floats, and the values of the categorical columns. ``experiment``
writes rows with exactly these columns; ``analysis`` validates a file against
them. One row per answered trial, in the spirit of jsPsych's data.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from advbias.errors import InputError
from advbias.trials import MAIN_TRIAL_TYPES, TRIAL_TYPES  # noqa: F401  (the ``condition`` values)

#: Column order of the export.
COLUMNS: tuple[str, ...] = (
    "experiment", "stimulus_set", "participant", "prolific_pid", "study_id", "session_id", "participant_status", "list", "seed",
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

#: The default catch-trial rule, shared so that the two stages cannot disagree: a participant who gets at least
#: this share of their catch trials right is paid by the experiment (its default ``max_catch_failures``) and
#: kept by the analysis (its default ``exclusions.min_catch_accuracy``); one below it is neither. Half: with the
#: default two catch trials one lapse is forgiven (Prolific lets researchers reject only after two failed
#: checks), and a participant at or below chance on catch trials is out. Studies that want a stricter rule set
#: both, in the experiment's TOML and in analysis.toml.
MIN_CATCH_ACCURACY = 0.5


def allowed_catch_failures(n_catch: int, min_accuracy: float = MIN_CATCH_ACCURACY) -> int:
    """The most catch failures out of ``n_catch`` that keep the accuracy at or above ``min_accuracy``."""
    return max(0, n_catch - math.ceil(round(min_accuracy * n_catch, 9)))

#: One line per column: what it means (the long form is docs/export.md). Psych-DS's ``variableMeasured`` and
#: the export's sidecar take these words, so a dataset describes itself wherever it is deposited.
DESCRIPTIONS: dict[str, str] = {
    "experiment": "The experiment's slug.",
    "stimulus_set": "The stimulus set's id: the sha256 of its manifest file, computed when the experiment imported it.",
    "participant": "advbias's participant id (opaque, random).",
    "prolific_pid": "The PROLIFIC_PID the participant arrived with (empty if none).",
    "study_id": "Prolific's STUDY_ID (empty if none).",
    "session_id": "Prolific's SESSION_ID (empty if none).",
    "participant_status": "in_progress, completed or screened_out, at export time.",
    "list": "The counterbalancing list the participant was assigned (0-based).",
    "seed": "The participant's random seed: with the set, the design and the list it rebuilds the trial sequence.",
    "trial_index": "0-based position in the participant's sequence (practice, main and catch together).",
    "kind": "practice, main or catch; practice trials never count in the analysis.",
    "condition": "The trial type: targets, vs_clean, vs_flip, vs_noise or catch.",
    "question": "The exact question shown.",
    "question_target": "The category the question asked about.",
    "eps": "The perturbation budget in 0-255 levels (L-infinity; 0 for catch trials).",
    "source": "The source photo, as in the stimulus manifest.",
    "pair_key": "The manifest's pair_key of the image perturbed toward the asked category (empty for catch trials).",
    "left_stimulus_id": "The stimulus shown on the left (the manifest's stimulus_id, sha256 of the image).",
    "right_stimulus_id": "The stimulus shown on the right (the manifest's stimulus_id, sha256 of the image).",
    "left_target": "The category the left image was perturbed toward (empty for clean, flip and noise images).",
    "right_target": "The category the right image was perturbed toward (empty for clean, flip and noise images).",
    "left_condition": "The manifest condition of the left image: adversarial, clean, flip or noise.",
    "right_condition": "The manifest condition of the right image: adversarial, clean, flip or noise.",
    "target_side": "left or right: the side of the image perturbed toward (catch: showing) the asked category.",
    "response": "left or right: the side chosen.",
    "chosen_target": "The left_target or right_target of the chosen side.",
    "chose_question_target": "1 when the chosen image is the one perturbed toward the asked category (the outcome; "
                             "catch trials: 1 = correct).",
    "response_source": "key or click: how the answer was given.",
    "rt_ms": "Response time in milliseconds from the stimulus onset frame to the key or click.",
    "presentation_ms": "The planned presentation time in milliseconds (empty: shown until response).",
    "onset_frame_ms": "requestAnimationFrame time (ms since page load) of the frame that drew the pair.",
    "offset_frame_ms": "requestAnimationFrame time of the frame that replaced the pair by the mask (empty: none).",
    "refresh_hz": "The display refresh rate measured by the browser check (empty when not measured).",
    "fullscreen": "1 when the page was fullscreen at the response.",
    "blurred": "1 when the window lost focus or was hidden between fixation and response.",
    "blur_events": "How many blur or hidden events happened between fixation and response.",
    "server_received_at": "When the server stored the response (ISO 8601 UTC).",
    "server_rt_ms": "Milliseconds of the server's clock from delivering the trial to receiving its answer.",
    "model_set": "The model set the trial's images were made on (a design factor like eps; empty for catch trials).",
    "fullscreen_mode": "What the page asked of fullscreen: required, recommended or off.",
    "fullscreen_exits": "How many times the participant left fullscreen before this answer.",
    "ignored_keys": "How many keys other than the answer keys were pressed during the trial.",
    "window_width": "The browser window's inner width in CSS pixels at the answer.",
    "window_height": "The browser window's inner height in CSS pixels at the answer.",
    "screen_width": "The screen's width in CSS pixels.",
    "screen_height": "The screen's height in CSS pixels.",
    "device_pixel_ratio": "Device pixels per CSS pixel.",
    "image_px": "The displayed size of each image in CSS pixels.",
}

#: The export's sidecar: ``FILE.json`` beside ``FILE.csv`` / ``FILE.parquet`` (and inside a Psych-DS dataset).
#: It says where the data came from: the experiment's configuration, the stimulus set's id, the analysis plan
#: stored before the first answer (its text, sha256 and the time it was stored) and the time of the first answer.
SIDECAR_FORMAT = "advbias-export-sidecar/1"
SIDECAR_KEYS = ("format", "experiment", "exported_at", "stimulus_set", "experiment_config", "design_summary",
                "analysis_plan", "first_answer_at", "n_rows")
PLAN_KEYS = ("text", "sha256", "stored_at")


def sidecar_path(data: str | Path) -> Path:
    """Where the sidecar of export file ``data`` lives: the same name with ``.json``."""
    return Path(data).with_suffix(".json")


def write_sidecar(data: str | Path, sidecar: dict[str, Any]) -> Path:
    """Write ``sidecar`` (keys :data:`SIDECAR_KEYS`) beside ``data``, atomically; returns its path."""
    missing = [k for k in SIDECAR_KEYS if k not in sidecar]
    if missing:
        raise InputError(f"the export sidecar lacks {', '.join(missing)}")
    path = sidecar_path(data)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps({**sidecar, "format": SIDECAR_FORMAT}, indent=2, sort_keys=True) + "\n",
                   encoding="utf-8")
    tmp.replace(path)
    return path


def read_sidecar(data: str | Path) -> dict[str, Any] | None:
    """The sidecar beside export file ``data``, checked; ``None`` when there is none (an older export)."""
    path = sidecar_path(data)
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict) or value.get("format") != SIDECAR_FORMAT:
        raise InputError(f"{path} is not an export sidecar ({SIDECAR_FORMAT})")
    plan = value.get("analysis_plan")
    if plan is not None and (not isinstance(plan, dict) or any(k not in plan for k in PLAN_KEYS)):
        raise InputError(f"{path}: analysis_plan must hold {', '.join(PLAN_KEYS)}")
    return value
