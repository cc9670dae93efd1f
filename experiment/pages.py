"""Participant-facing pages and the stimulus images.

``/run/<slug>`` is one HTML page whose screens (consent, instructions, browser
check, practice, trials, breaks, debrief, completion) are driven by
``static/run.js`` through the JSON API. The page carries the experiment's texts
and timings, never anything about targets or budgets. Images are served under
per-participant keyed aliases in a fixed-length encoding (experiment/delivery.py).
"""
from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, render_template

from experiment import delivery, errors, study

bp = Blueprint("pages", __name__)


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


@bp.get("/stimuli/<slug>/<participant>/<name>")
def stimulus(slug: str, participant: str, name: str):  # type: ignore[no-untyped-def]
    """An image by its participant's keyed alias (experiment/delivery.py): fixed length, no validators, cached privately."""
    state = current_app.extensions["advbias"]
    stimulus_id = delivery.lookup(state.db, slug, participant, name)
    data = delivery.image_bytes(state.store, stimulus_id) if stimulus_id else None
    if data is None:
        abort(404)
    # A plain response: no Last-Modified, no ETag, no conditional or range handling.
    response = Response(data, mimetype="image/png")
    response.headers["Cache-Control"] = delivery.CACHE_CONTROL
    return response
