"""Validation of what participants send: identifiers, browser-check and answer fields.

One table per request body (name -> type, bounds) so that the API can publish the schema it enforces.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping

from experiment.errors import StudyError

#: Identifiers are checked whole, with ``fullmatch`` and ASCII classes: ``^...$`` would accept
#: "X\n" (``$`` matches before a final newline), so ``?PROLIFIC_PID=X%0A`` would be a second participant.
SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}", re.ASCII)
HEX64_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)
CODE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,128}", re.ASCII)
KEY_RE = re.compile(r"[A-Za-z0-9_-]{8,64}", re.ASCII)


def clean_id(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not TOKEN_RE.fullmatch(value):
        raise StudyError(f"{name} must be 1-128 letters, digits, '-' or '_'")
    return value


FieldSpec = tuple[str, Any, Any]

BROWSER_FIELDS: dict[str, FieldSpec] = {
    "window_width": ("int", 0, 100_000),
    "window_height": ("int", 0, 100_000),
    "screen_width": ("int", 0, 100_000),
    "screen_height": ("int", 0, 100_000),
    "device_pixel_ratio": ("number", 0, 64),
    "refresh_hz": ("number", 1, 1000),
    "image_px": ("int", 0, 100_000),
    "user_agent": ("str", 0, 512),
    "fullscreen": ("bool", 0, 1),
}


def validate_fields(payload: Any, spec: Mapping[str, FieldSpec], required: Iterable[str]) -> dict:
    """Check a JSON object against a flat field spec: types, ranges, required and unknown keys."""
    if not isinstance(payload, dict):
        raise StudyError("the request body must be a JSON object")
    unknown = sorted(set(payload) - set(spec))
    if unknown:
        raise StudyError(f"unknown field(s): {', '.join(unknown)[:200]}")
    for key in required:
        if payload.get(key) is None:
            raise StudyError(f"field {key} is required")
    out: dict[str, Any] = {}
    for key, value in payload.items():
        kind, low, high = spec[key]
        if value is None:
            out[key] = None
            continue
        if kind == "bool":
            if not isinstance(value, bool):
                raise StudyError(f"field {key} must be true or false")
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise StudyError(f"field {key} must be an integer between {low:g} and {high:g}")
        elif kind == "number":
            if (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or not low <= value <= high
            ):
                raise StudyError(f"field {key} must be a number between {low:g} and {high:g}")
            value = float(value)
        elif kind == "str":
            if not isinstance(value, str) or not low <= len(value) <= high:
                size = f"at most {high:g}" if low == 0 else f"{low:g} to {high:g}"
                raise StudyError(f"field {key} must be a string of {size} characters")
            if "\x00" in value or not _encodable(value):
                raise StudyError(f"field {key} contains characters that cannot be stored")
        elif kind == "enum":
            if value not in low:
                raise StudyError(f"field {key} must be one of {', '.join(map(repr, low))}")
        out[key] = value
    return out


def _encodable(text: str) -> bool:
    """False for lone surrogates ("\\ud800" in JSON), which no database can store as text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


RESPONSE_FIELDS: dict[str, FieldSpec] = {
    "trial_id": ("str", 1, 32),
    "idempotency_key": ("str", 8, 64),
    "response": ("enum", ("left", "right"), None),
    "response_source": ("enum", ("key", "click"), None),
    "rt_ms": ("number", 0, 3_600_000),
    "onset_frame_ms": ("number", 0, 1e12),
    "offset_frame_ms": ("number", 0, 1e12),
    "fullscreen": ("bool", 0, 1),
    "blurred": ("bool", 0, 1),
    "blur_events": ("int", 0, 100_000),
    # What the browser measured at the answer (docs/export.md), and its counts of ignored keys and fullscreen exits.
    "window_width": ("int", 0, 100_000),
    "window_height": ("int", 0, 100_000),
    "screen_width": ("int", 0, 100_000),
    "screen_height": ("int", 0, 100_000),
    "device_pixel_ratio": ("number", 0, 64),
    "image_px": ("int", 0, 100_000),
    "fullscreen_exits": ("int", 0, 100_000),
    "ignored_keys": ("int", 0, 100_000),
}
#: The measurements of RESPONSE_FIELDS stored as they come (None when the browser did not send them).
GEOMETRY_FIELDS = ("window_width", "window_height", "screen_width", "screen_height", "device_pixel_ratio", "image_px",
                   "fullscreen_exits", "ignored_keys")


