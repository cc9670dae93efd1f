"""In Chromium: someone else's PROLIFIC_PID is refused with a message; the own browser resumes;
the server's clock per trial (``server_rt_ms``) never goes below the page's own delays.

Uses the browser helpers and the live gunicorn server of ``test_browser.py``.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest
from test_browser import (  # noqa: F401
    CONFIG, PHASE_LOG, TIMEOUT_MS, LiveStudy, Participant, check_export, chromium, context, shots,
)

pytestmark = pytest.mark.browser


def url(live: LiveStudy, slug: str, pid: str, session: str | None) -> str:
    tail = f"&SESSION_ID={session}" if session else ""
    return f"{live.url}/run/{slug}?PROLIFIC_PID={pid}&STUDY_ID=browser{tail}"


def test_a_known_pid_from_another_session_is_refused(live_study: LiveStudy, chromium: Any, context: Any,  # noqa: F811
                                                     shots: Path) -> None:  # noqa: F811
    slug = live_study.create_experiment(**CONFIG)
    owner = Participant(context.new_page(), shots, "owner")
    owner.open(url(live_study, slug, "PID-OWN", "s1"))
    owner.run(stop_after_answers=2)
    # Another browser (no localStorage) with the same PROLIFIC_PID but another Prolific session.
    other_ctx = chromium.new_context(viewport={"width": 1280, "height": 860})
    other_ctx.set_default_timeout(TIMEOUT_MS)
    other_ctx.add_init_script(PHASE_LOG)
    try:
        thief = Participant(other_ctx.new_page(), shots, "other")
        thief.open(url(live_study, slug, "PID-OWN", "s2"))
        assert thief.next_step() == "state"
        thief.shot("refused")
        assert thief.page.locator("#app").get_attribute("data-state") == "duplicate"
        text = thief.page.locator("#screen-state .state[data-state=duplicate]").inner_text()
        assert "already started this study" in text
        assert thief.page.evaluate("localStorage.length") == 0  # no token reached this browser
    finally:
        other_ctx.close()
    # The owner's browser resumes even from a link without SESSION_ID (its own token), and finishes.
    owner.open(url(live_study, slug, "PID-OWN", None))
    assert owner.run() == "LIVE-DONE"
    rows = check_export(live_study, slug, shots, {"PID-OWN": owner.answers})
    # The page's fixation and inter-trial interval come before every answer after the first: the
    # server's median per trial cannot be below them (a scripted client shows a few ms).
    main = [float(r["server_rt_ms"]) for r in rows if r["kind"] != "practice" and r["trial_index"] != "0"]
    assert statistics.median(main) >= CONFIG["fixation_ms"] + CONFIG["iti_ms"], main
