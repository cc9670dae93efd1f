"""Participant-facing pages and the stimulus images.

``/run/<slug>`` is one HTML page whose screens (consent, instructions, browser
check, practice, trials, breaks, debrief, completion) are driven by
``static/run.js`` through the JSON API. The page carries the experiment's texts
and timings, never anything about targets or budgets. Images are served by
their opaque content id from the instance's image store.
"""
from __future__ import annotations

import re

from flask import Blueprint, abort, current_app, render_template, send_from_directory

from experiment import errors, study

bp = Blueprint("pages", __name__)
STIMULUS_NAME = re.compile(r"^[0-9a-f]{64}\.png$")


@bp.get("/")
def index():  # type: ignore[no-untyped-def]
    return render_template("index.html")


@bp.get("/run/<slug>")
def run(slug: str):  # type: ignore[no-untyped-def]
    try:
        exp = study.find_experiment(current_app.extensions["advbias"].db, slug)
    except errors.NotFound:
        abort(404)
    settings = exp.settings
    return render_template(
        "run.html",
        slug=exp.slug,
        title=settings["title"],
        consent_paragraphs=_paragraphs(settings["consent_text"]),
        instruction_paragraphs=_paragraphs(settings["instructions_text"]),
        debrief_question=settings["debrief_question"],
        timing={
            "fixation-ms": settings["fixation_ms"],
            "iti-ms": settings["iti_ms"],
            "break-every": settings["break_every"],
            "min-width": settings["min_window_width"],
            "min-height": settings["min_window_height"],
        },
    )


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if p.strip()]


@bp.get("/stimuli/<name>")
def stimulus(name: str):  # type: ignore[no-untyped-def]
    """An image by content id; immutable, so browsers may cache it for good."""
    if not STIMULUS_NAME.match(name):
        abort(404)
    store = current_app.extensions["advbias"].store
    if not (store / name).is_file():
        abort(404)
    response = send_from_directory(store, name, mimetype="image/png", max_age=31536000, etag=False,
                                   last_modified=None)
    response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    return response
