"""Experiment configuration: the keys an experiment TOML may set, their defaults and checks."""
from __future__ import annotations

import json
import math
import re
import secrets
import string
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit


from advbias.errors import InputError, InputFileNotFound
from advbias.export import FULLSCREEN_MODES, allowed_catch_failures
from advbias.trials import MAIN_TRIAL_TYPES
from experiment.design import DEFAULT_QUESTION, DesignConfig
from experiment.fields import CODE_RE

#: Every key an experiment's TOML may set, with its type and default.
DEFAULT_REDIRECT = "https://app.prolific.com/submissions/complete?cc={code}"

CONFIG_KEYS: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "title": (str, "A short study about images"),
    "conditions": (list, ["targets"]),
    "pairs": (list, None),
    "budgets": (list, None),
    "model_sets": (list, None),
    "trials_per_participant": (int, None),
    "practice_trials": (int, 2),
    "catch_trials": (int, 2),
    "catch_min_prob": ((int, float), 0.5),
    "max_catch_failures": (int, None),
    "question": (str, DEFAULT_QUESTION),
    "presentation": ((str, int), "until_response"),
    "fixation_ms": (int, 500),
    "iti_ms": (int, 500),
    "break_every": (int, 0),
    "completion_code": (str, None),
    "screenout_code": (str, None),
    "redirect_url": (str, DEFAULT_REDIRECT),
    "consent_text": (str, None),
    "instructions_text": (str, None),
    "debrief_question": (str, "Did anything look unusual to you? (optional)"),
    "min_window_width": (int, 800),
    "min_window_height": (int, 500),
    "require_prolific_pid": (bool, None),
    "timeout_minutes": (int, 90),
    "screened_out_frees_slot": (bool, True),
    "min_median_trial_ms": (int, 0),
    "min_median_rt_ms": (int, 250),
    "fullscreen": (str, "required"),
    "min_refresh_hz": ((int, float), 0),
    "debrief_text": (str, None),
    "redirect_after_s": (int, 10),
    "progress": (bool, True),
}

#: Typical time a participant takes to answer an until-response trial and the page to store it (ms);
#: with the fixation and the inter-trial interval it gives the consent's estimate of the duration.
TYPICAL_TRIAL_MS = 1800
#: Consent, instructions, the screen check and the debrief, in minutes.
OVERHEAD_MINUTES = 2

DEFAULT_CONSENT = (
    "You are invited to take part in a short study about how people see images. You will see pairs of "
    "pictures and choose the one that fits a question better. It takes about {minutes} minutes. Your answers are "
    "stored without your name, you may stop at any time, and the data will be used for research only."
)
DEFAULT_INSTRUCTIONS = (
    "On each trial a cross appears in the middle of the screen, then two pictures side by side and a question. "
    "Press F to choose the left picture or J to choose the right picture (or click it). There are no right or "
    "wrong answers: go with your first impression. The first trials are practice."
)
DEFAULT_DEBRIEF = (
    "Thank you! Here is what this study was about. Some of the pictures you saw had been changed very slightly "
    "by a computer program: tiny changes to the colours of the pixels, made so that an image-recognition program "
    "would take the picture for a different kind of object. Such changes are hard or impossible for people to see.\n\n"
    "We wanted to find out whether these changes also nudge people's choices, even when nobody notices them. "
    "There were no right or wrong answers, and it is fine if you saw nothing unusual. The pictures themselves "
    "are ordinary photos; nothing was done to them that could harm you or your device.\n\n"
    "If you have questions, or want your answers withdrawn, write to the researcher through Prolific."
)


def load_config_file(path: Path | None) -> dict[str, Any]:
    """Read an experiment TOML file (an absent path means all defaults)."""
    if path is None:
        return {}
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise InputFileNotFound(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path} is not valid TOML: {exc}") from None


def _typed_values(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Every known key with its value or default, each of the declared type; unknown keys refused."""
    unknown = sorted(set(raw) - set(CONFIG_KEYS))
    if unknown:
        raise InputError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(CONFIG_KEYS)}")
    values: dict[str, Any] = {}
    for key, (kind, default) in CONFIG_KEYS.items():
        value = raw.get(key, default)
        if value is not None and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)):
            raise InputError(f"config key {key} has the wrong type ({type(value).__name__})")
        values[key] = value
    for key in ("conditions", "pairs", "model_sets"):
        if values[key] is not None and not all(isinstance(v, str) for v in values[key]):
            raise InputError(f"config key {key} must be a list of strings")
    if values["budgets"] is not None and not all(type(v) is int for v in values["budgets"]):
        raise InputError("config key budgets must be a list of integers (8-bit levels)")
    for cond in values["conditions"]:
        if cond not in MAIN_TRIAL_TYPES:
            raise InputError(f"unknown trial type {cond!r}: choose from {', '.join(MAIN_TRIAL_TYPES)}")
    return values


def _check_ranges(values: Mapping[str, Any]) -> int | None:
    """Numbers within their bounds; returns the presentation time in ms (None: until the response)."""
    for key in ("practice_trials", "catch_trials", "fixation_ms", "iti_ms", "break_every"):
        if not 0 <= values[key] <= 100_000:
            raise InputError(f"config key {key} must be between 0 and 100000")
    if not 0.0 <= float(values["catch_min_prob"]) <= 1.0:
        raise InputError("catch_min_prob must be between 0 and 1")
    if not 0 <= values["min_median_trial_ms"] <= 600_000:
        raise InputError("min_median_trial_ms must be between 0 (off) and 600000")
    if not 0 <= values["min_median_rt_ms"] <= 60_000:
        raise InputError("min_median_rt_ms must be between 0 (off) and 60000")
    if values["fullscreen"] not in FULLSCREEN_MODES:
        raise InputError(f"fullscreen must be one of {', '.join(map(repr, FULLSCREEN_MODES))}")
    if not 0 <= float(values["min_refresh_hz"]) <= 1000:
        raise InputError("min_refresh_hz must be between 0 (any measurable rate) and 1000")
    if not 0 <= values["redirect_after_s"] <= 3600:
        raise InputError("redirect_after_s must be between 0 (no automatic redirect) and 3600")
    if not 1 <= values["timeout_minutes"] <= 7 * 24 * 60:
        raise InputError("timeout_minutes must be between 1 and 10080 (a week)")
    presentation = values["presentation"]
    if isinstance(presentation, str):
        if presentation != "until_response":
            raise InputError('presentation must be "until_response" or a duration in milliseconds')
        return None
    if not 1 <= presentation <= 60_000:
        raise InputError("presentation must be between 1 and 60000 milliseconds")
    return presentation


def _completion(values: Mapping[str, Any]) -> tuple[str, str, bool]:
    """(completion code, redirect URL, whether a PROLIFIC_PID is required), checked."""
    code = values["completion_code"] or "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(8))
    for key, value in (("completion_code", code), ("screenout_code", values["screenout_code"])):
        if value is not None and not CODE_RE.fullmatch(value):
            raise InputError(f"{key} must be 1-64 letters, digits, '-' or '_'")
    redirect = values["redirect_url"]
    if not re.match(r"^https?://", redirect):
        raise InputError("redirect_url must start with https:// or http://")
    try:
        redirect.format(code="X")
    except (KeyError, IndexError, ValueError):
        raise InputError("redirect_url may contain {code} and no other {field}") from None
    require_pid = values["require_prolific_pid"]
    if require_pid is None:  # a study that sends people back to Prolific is taken through Prolific
        require_pid = (urlsplit(redirect).hostname or "").endswith("prolific.com")
    return code, redirect, require_pid


def resolve_config(raw: Mapping[str, Any]) -> tuple[DesignConfig, dict[str, Any]]:
    """Validate an experiment configuration; returns the design part and every other setting."""
    values = _typed_values(raw)
    presentation_ms = _check_ranges(values)
    code, redirect, require_pid = _completion(values)
    design = DesignConfig(
        conditions=tuple(values["conditions"]),
        pairs=tuple(values["pairs"]) if values["pairs"] is not None else None,
        budgets=tuple(values["budgets"]) if values["budgets"] is not None else None,
        model_sets=tuple(values["model_sets"]) if values["model_sets"] is not None else None,
        trials_per_participant=values["trials_per_participant"],
        practice_trials=values["practice_trials"],
        catch_trials=values["catch_trials"],
        catch_min_prob=float(values["catch_min_prob"]),
        question=values["question"],
        presentation_ms=presentation_ms,
    )
    max_fail = values["max_catch_failures"]
    if max_fail is None:
        max_fail = allowed_catch_failures(design.catch_trials)  # the analysis's default rule too
    settings = {
        "title": values["title"],
        "question": values["question"],
        "presentation_ms": presentation_ms,
        "fixation_ms": values["fixation_ms"],
        "iti_ms": values["iti_ms"],
        "break_every": values["break_every"],
        "completion_code": code,
        "screenout_code": values["screenout_code"],
        "max_catch_failures": max_fail,
        "redirect_url": redirect,
        "consent_text": values["consent_text"] or DEFAULT_CONSENT,
        "instructions_text": values["instructions_text"] or DEFAULT_INSTRUCTIONS,
        "debrief_question": values["debrief_question"],
        "min_window_width": values["min_window_width"],
        "min_window_height": values["min_window_height"],
        "require_prolific_pid": require_pid,
        "timeout_minutes": values["timeout_minutes"],
        "screened_out_frees_slot": values["screened_out_frees_slot"],
        "min_median_trial_ms": values["min_median_trial_ms"],
        "min_median_rt_ms": values["min_median_rt_ms"],
        "fullscreen": values["fullscreen"],
        "min_refresh_hz": float(values["min_refresh_hz"]),
        "debrief_text": values["debrief_text"] or DEFAULT_DEBRIEF,
        "redirect_after_s": values["redirect_after_s"],
        "progress": values["progress"],
        "design": jsonable(asdict(design)),
        "config": dict(raw),
    }
    return design, settings


def estimate_minutes(settings: Mapping[str, Any]) -> int:
    """The study's duration as the consent states it: trials times their typical length, plus the screens around.

    A trial takes its fixation, the answer (or the timed presentation, whichever is
    longer, taken as :data:`TYPICAL_TRIAL_MS`) and the inter-trial interval; rounded up.
    """
    summary = settings.get("design_summary") or {}
    n = int(summary.get("trials_per_participant") or 0)
    per_trial = int(settings.get("fixation_ms") or 0) + int(settings.get("iti_ms") or 0)
    per_trial += max(TYPICAL_TRIAL_MS, int(settings.get("presentation_ms") or 0))
    return OVERHEAD_MINUTES + math.ceil(n * per_trial / 60_000)


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def design_config_from_settings(settings: Mapping[str, Any]) -> DesignConfig:
    d = dict(settings["design"])
    for key in ("conditions", "pairs", "budgets", "model_sets"):
        if d.get(key) is not None:
            d[key] = tuple(d[key])
    return DesignConfig(**d)


