"""The participant JSON API under ``/api/v1/`` (described at ``/api/v1/openapi.json``).

A participant is identified by the secret ``token`` returned when they start;
every other call names it in the path. Errors are ``{"error": "..."}`` with a
4xx status; bodies are limited to 64 KiB and validated field by field (unknown
fields are refused, so a typo never silently drops data).
"""
from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from experiment import errors, fields, participants, rehearsal, responses, study
from experiment.db import Database, current_revision

bp = Blueprint("api", __name__, url_prefix="/api/v1")
#: The start call's body: Prolific's three URL parameters, to resume the browser's own token, and the
#: preview key of a rehearsal (experiment/rehearsal.py).
START_FIELDS: dict[str, fields.FieldSpec] = {
    "prolific_pid": ("str", 0, 128), "study_id": ("str", 0, 128), "session_id": ("str", 0, 128),
    "token": ("str", 0, 128), "preview": ("str", 0, 64),
}


def _db() -> Database:
    return current_app.extensions["advbias"].db


def _body(optional: bool = False) -> Any:
    """The JSON body; an empty body counts as ``{}`` where the call needs no fields."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        if optional:
            return {}
        raise errors.StudyError("the request body must be a JSON object")
    try:
        # Parsed here rather than by Flask so that every malformed body, deeply nested ones
        # included (RecursionError), is a 400 and never a 500.
        payload = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise errors.StudyError("the request body is not valid JSON") from None
    if payload is None:
        raise errors.StudyError("the request body is not valid JSON")
    return payload


@bp.app_errorhandler(errors.StudyError)
def _study_error(exc: errors.StudyError):  # type: ignore[no-untyped-def]
    response = jsonify(error=exc.message, **exc.extra)
    if "retry_after" in exc.extra:
        response.headers["Retry-After"] = str(int(exc.extra["retry_after"]))
    return response, exc.status


@bp.get("/health")
def health():  # type: ignore[no-untyped-def]
    """Liveness plus the schema revision (used by deployment checks and the test servers)."""
    return jsonify(ok=True, schema=current_revision(_db().engine))


@bp.post("/experiments/<slug>/participants")
def start(slug: str):  # type: ignore[no-untyped-def]
    data = fields.validate_fields(_body(optional=True), START_FIELDS, ())
    limit, window = current_app.config["ADVBIAS"].start_limit
    policy = participants.StartPolicy(current_app.config["SECRET_KEY"], request.remote_addr or "", limit, window,
                                      clock=current_app.config["CLOCK"])
    preview = bool(data.get("preview"))
    if preview and not rehearsal.is_preview(study.find_experiment(_db(), slug), data["preview"]):
        raise errors.Forbidden("this preview link is not valid (it may belong to another study)", reason="bad_preview")
    state, created = participants.start_participant(
        _db(), slug, data.get("prolific_pid"), data.get("study_id"), data.get("session_id"),
        token=data.get("token"), policy=None if preview else policy, preview=preview,
    )
    return jsonify(state), 201 if created else 200


@bp.get("/participants/<token>")
def state(token: str):  # type: ignore[no-untyped-def]
    return jsonify(participants.state_of(_db(), token))


@bp.post("/participants/<token>/consent")
def consent(token: str):  # type: ignore[no-untyped-def]
    payload = _body(optional=True)
    fields.validate_fields(payload, {"consent": ("bool", 0, 1)}, ())
    if payload.get("consent") is False:
        raise errors.StudyError("consent must be true to take part")
    return jsonify(participants.record_consent(_db(), token))


@bp.post("/participants/<token>/browser-check")
def browser_check(token: str):  # type: ignore[no-untyped-def]
    return jsonify(participants.record_browser_check(_db(), token, _body()))


_DIGITS = re.compile(r"-?[0-9]{1,9}", re.ASCII)


def _int_arg(name: str, default: int | None, low: int, high: int) -> int | None:
    value = request.args.get(name)
    if value is None or value == "":
        return default
    # int() would also take " 1\n" and Unicode digits ("\uff11"): only ASCII digits (and a sign), whole;
    # a negative number is an integer out of range, and is told so.
    if not _DIGITS.fullmatch(value):
        raise errors.StudyError(f"query parameter {name} must be an integer")
    number = int(value)
    if not low <= number <= high:
        raise errors.StudyError(f"query parameter {name} must be between {low} and {high}")
    return number


@bp.get("/participants/<token>/trials")
def trials(token: str):  # type: ignore[no-untyped-def]
    start = _int_arg("start", None, 0, 1_000_000)
    count = _int_arg("count", 20, 1, 500)
    assert count is not None
    return jsonify(participants.list_trials(_db(), token, start, count))


@bp.post("/participants/<token>/responses")
def respond(token: str):  # type: ignore[no-untyped-def]
    answer, replayed = responses.record_response(_db(), token, _body())
    response = jsonify(answer)
    response.status_code = 200
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.post("/participants/<token>/finish")
def finish(token: str):  # type: ignore[no-untyped-def]
    return jsonify(responses.finish(_db(), token, _body(optional=True)))


@bp.get("/openapi.json")
def openapi():  # type: ignore[no-untyped-def]
    return jsonify(OPENAPI)


# --------------------------------------------------------------------------- OpenAPI document

def _error_responses(*codes: int) -> dict[str, Any]:
    text = {400: "invalid input", 403: "not allowed yet", 404: "unknown experiment, participant or trial",
            409: "conflict with the stored state", 413: "body too large",
            429: "too many new participants from this address (header Retry-After)",
            503: "too many starts at this moment: retry after retry_after_ms"}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for c in codes}


def _json_body(ref: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _ok(ref: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


TOKEN_PARAM = {"name": "token", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"},
               "description": "the participant's secret token returned by the start call"}


def _field_schema(spec: dict[str, fields.FieldSpec], required: list[str]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name, (kind, low, high) in spec.items():
        if kind == "bool":
            props[name] = {"type": "boolean"}
        elif kind == "int":
            props[name] = {"type": "integer", "minimum": low, "maximum": high}
        elif kind == "number":
            props[name] = {"type": "number", "minimum": low, "maximum": high}
        elif kind == "enum":
            props[name] = {"type": "string", "enum": list(low)}
        else:
            props[name] = {"type": "string", "minLength": int(low), "maxLength": int(high)}
    return {"type": "object", "additionalProperties": False, "required": required, "properties": props}


_response_schema = _field_schema(fields.RESPONSE_FIELDS, ["trial_id", "idempotency_key", "response", "rt_ms"])
_response_schema["properties"]["idempotency_key"] = {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$"}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "advbias participant API",
        "version": "1",
        "description": "Start or resume a participant, record consent and the browser check, fetch trials, "
        "store responses (idempotent) and finish. Errors are JSON objects with an `error` message.",
    },
    "paths": {
        "/api/v1/health": {"get": {"summary": "liveness and schema revision", "responses": {"200": {"description": "OK"}}}},
        "/api/v1/experiments/{slug}/participants": {
            "post": {
                "summary": "start a participant, or resume the one with this PROLIFIC_PID (resuming needs the same "
                "session_id or the participant's token; otherwise 409)",
                "parameters": [{"name": "slug", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": _json_body("Start", required=False),
                "responses": {"201": _ok("State", "created"), "200": _ok("State", "resumed"),
                              **_error_responses(400, 403, 404, 409, 413, 429, 503)},
            }
        },
        "/api/v1/participants/{token}": {
            "get": {"summary": "the participant's progress", "parameters": [TOKEN_PARAM],
                    "responses": {"200": _ok("State"), **_error_responses(404)}}
        },
        "/api/v1/participants/{token}/consent": {
            "post": {"summary": "record consent", "parameters": [TOKEN_PARAM], "requestBody": _json_body("Consent", False),
                     "responses": {"200": _ok("State"), **_error_responses(400, 404, 413)}}
        },
        "/api/v1/participants/{token}/browser-check": {
            "post": {"summary": "record window size and refresh rate (the first check is kept)",
                     "parameters": [TOKEN_PARAM], "requestBody": _json_body("BrowserCheck"),
                     "responses": {"200": _ok("State"), **_error_responses(400, 403, 404, 413)}}
        },
        "/api/v1/participants/{token}/trials": {
            "get": {
                "summary": "the participant's trials from `start` (default: the next unanswered one)",
                "parameters": [
                    TOKEN_PARAM,
                    {"name": "start", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "count", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                ],
                "responses": {"200": _ok("Trials"), **_error_responses(400, 403, 404)},
            }
        },
        "/api/v1/participants/{token}/responses": {
            "post": {
                "summary": "store the answer to the next trial; a replay with the same idempotency_key returns "
                "the same answer (header Idempotent-Replayed: true) and stores nothing",
                "parameters": [TOKEN_PARAM],
                "requestBody": _json_body("Response"),
                "responses": {"200": _ok("Stored"), **_error_responses(400, 403, 404, 409, 413)},
            }
        },
        "/api/v1/participants/{token}/finish": {
            "post": {"summary": "record the debrief answer and complete; returns the completion code",
                     "parameters": [TOKEN_PARAM], "requestBody": _json_body("Finish", False),
                     "responses": {"200": _ok("State"), **_error_responses(400, 404, 409, 413)}}
        },
    },
    "components": {
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"},
                      "reason": {"type": "string", "enum": ["closed", "no_pid", "duplicate", "busy", "bad_preview"],
                                 "description": "for the page: which friendly explanation to show"},
                      "next_index": {"type": "integer"}, "retry_after_ms": {"type": "integer"}}},
            "Start": _field_schema(START_FIELDS, []),
            "Consent": _field_schema({"consent": ("bool", 0, 1)}, []),
            "BrowserCheck": _field_schema(fields.BROWSER_FIELDS, ["window_width", "window_height"]),
            "Response": _response_schema,
            "Finish": _field_schema({"text": ("str", 0, 5000)}, []),
            "State": {
                "type": "object",
                "properties": {
                    "token": {"type": "string"},
                    "status": {"type": "string", "enum": ["in_progress", "completed", "screened_out"]},
                    "consented": {"type": "boolean"},
                    "browser_checked": {"type": "boolean"},
                    "n_trials": {"type": "integer"},
                    "n_practice": {"type": "integer"},
                    "next_index": {"type": "integer"},
                    "debriefed": {"type": "boolean"},
                    "completion_code": {"type": "string", "nullable": True},
                    "redirect_url": {"type": "string", "nullable": True},
                    "preview": {"type": "boolean", "description": "a rehearsal: no list slot, not exported"},
                    "debrief_paragraphs": {"type": "array", "items": {"type": "string"}, "nullable": True,
                                           "description": "what the study was about; once the trials are over"},
                },
            },
            "Trials": {
                "type": "object",
                "properties": {
                    "next_index": {"type": "integer"},
                    "n_trials": {"type": "integer"},
                    "trials": {"type": "array", "items": {"$ref": "#/components/schemas/Trial"}},
                },
            },
            "Trial": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "index": {"type": "integer"},
                    "practice": {"type": "boolean"},
                    "question": {"type": "string"},
                    "left": {"type": "string", "description": "image URL /stimuli/<experiment>/<keyed alias>.png"},
                    "right": {"type": "string"},
                    "presentation_ms": {"type": "integer", "nullable": True},
                },
            },
            "Stored": {
                "type": "object",
                "properties": {
                    "trial_id": {"type": "string"},
                    "index": {"type": "integer"},
                    "stored": {"type": "boolean"},
                    "next_index": {"type": "integer"},
                    "done": {"type": "boolean"},
                    "received_at": {"type": "string", "format": "date-time"},
                },
            },
        }
    },
}
