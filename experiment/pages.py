"""Participant-facing pages and the stimulus images.

``/run/<slug>`` is one HTML page whose screens (consent, instructions, browser
check, practice, trials, breaks, debrief, completion) are driven by
``static/run.js`` through the JSON API. The page carries the experiment's texts
and timings, never anything about targets or budgets. Images are served under
per-participant keyed aliases in a fixed-length encoding (experiment/delivery.py).
"""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, render_template

from experiment import delivery, errors, study
from experiment.config import estimate_minutes

bp = Blueprint("pages", __name__)
#: Where a participant turned away is sent to return the study (studies that send people back to Prolific).
PROLIFIC_HOME = "https://app.prolific.com/"


@bp.get("/")
def index():  # type: ignore[no-untyped-def]
    return render_template("index.html")


@bp.get("/run/<slug>")
def run(slug: str):  # type: ignore[no-untyped-def]
    try:
        exp = study.find_experiment(current_app.extensions["advbias"].db, slug)
    except errors.NotFound:
        # A participant with a wrong link reads why, in words, and where to go (never a bare 404).
        return render_template("notice.html", title="Study not found", return_url=PROLIFIC_HOME, paragraphs=[
            "There is no study at this address. Please check the link, or open the study again from your "
            "Prolific study page."]), 404
    settings = exp.settings
    minutes = str(estimate_minutes(settings))
    return render_template(
        "run.html",
        slug=exp.slug,
        title=settings["title"],
        consent_paragraphs=_paragraphs(settings["consent_text"].replace("{minutes}", minutes)),
        instruction_paragraphs=_paragraphs(settings["instructions_text"]),
        debrief_question=settings["debrief_question"],
        return_url=return_url(settings),
        timing={
            "fixation-ms": settings["fixation_ms"],
            "iti-ms": settings["iti_ms"],
            "break-every": settings["break_every"],
            "min-width": settings["min_window_width"],
            "min-height": settings["min_window_height"],
            # Studies made before these settings only recommended fullscreen and did not screen by speed.
            "fullscreen": settings.get("fullscreen", "recommended"),
            "min-refresh-hz": settings.get("min_refresh_hz", 0),
            "redirect-after-s": settings.get("redirect_after_s", 10),
            "progress": int(bool(settings.get("progress", True))),
            "image-px": delivery.image_px(current_app.extensions["advbias"].db,
                                          current_app.extensions["advbias"].store, exp),
        },
    )


def return_url(settings: dict) -> str | None:
    """Where the refusal pages point: Prolific, for studies taken through it (a PROLIFIC_PID is required, or
    participants are sent back there at the end); None for other studies."""
    host = urlsplit(settings.get("redirect_url") or "").hostname or ""
    on_prolific = settings.get("require_prolific_pid") or host == "prolific.com" or host.endswith(".prolific.com")
    return PROLIFIC_HOME if on_prolific else None


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
