"""The pilot's server-side rules: screen-out at finish, refusals the page can explain, preview and void,
the geometry columns, the fullscreen mode in the export and in the analysis, the admin's numbers.

The browser side (device gate, fullscreen pauses, debrief and redirect) is tested in real Chromium
by tests/test_rehearsal.py.
"""
from __future__ import annotations

import math
import re
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from sqlalchemy import select

from advbias.export import COLUMNS, FULLSCREEN_MODES
from experiment import rehearsal
from test_experiment_admin import admin_client  # noqa: F401 (fixture)
from experiment.config import estimate_minutes, resolve_config
from experiment.export import export_rows
from experiment.models import Participant
from experiment.monitor import wilson
from experiment.study import get_experiment, list_counts

GEOMETRY = {"window_width": 1440, "window_height": 900, "screen_width": 1920, "screen_height": 1080,
            "device_pixel_ratio": 2.0, "image_px": 448, "fullscreen_exits": 0, "ignored_keys": 0}


def catch_aware(truth: dict[str, str], wrong: bool = False) -> Any:
    """Answers catch trials right (or wrong) by the stored truth, main trials left."""
    def choose(t: dict[str, Any]) -> str:
        side = truth.get(t["id"])
        if side is None:
            return "left"
        return ("right" if side == "left" else "left") if wrong else side
    return choose


def catch_truth(db: Any) -> dict[str, str]:
    from experiment.models import Trial

    with db.session() as s:
        return dict(s.execute(select(Trial.public_id, Trial.target_side).where(Trial.kind == "catch")).all())


def take_part(p: Any, db: Any, rt_ms: float, wrong_catch: bool = False, **extra: Any) -> dict[str, Any]:
    p.prepare()
    choose = catch_aware(catch_truth(db), wrong_catch)
    for t in p.trials():
        assert p.answer(t, choose(t), rt_ms=rt_ms, **{**GEOMETRY, **extra}).status_code == 200
    response = p.finish()
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_screen_out_follows_speed_and_catch_trials_by_default(db, make_experiment, participant) -> None:  # type: ignore[no-untyped-def]
    slug = make_experiment("screen", completion_code="PAID-1")  # defaults: no screen-out code
    careful = take_part(participant(slug, prolific_pid="careful"), db, rt_ms=900.0)
    assert careful["status"] == "completed" and careful["completion_code"] == "PAID-1"
    assert careful["debrief_paragraphs"] and "changed" in careful["debrief_paragraphs"][0]
    masher = take_part(participant(slug, prolific_pid="masher"), db, rt_ms=10.0)
    assert masher["status"] == "screened_out" and masher["completion_code"] is None and masher["redirect_url"] is None
    inattentive = take_part(participant(slug, prolific_pid="inattentive"), db, rt_ms=900.0, wrong_catch=True)
    assert inattentive["status"] == "screened_out" and inattentive["completion_code"] is None
    # just above the floor completes: the rule is the median main-trial rt_ms against min_median_rt_ms
    edge = take_part(participant(slug, prolific_pid="edge"), db, rt_ms=251.0)
    assert edge["status"] == "completed"


def test_a_screen_out_code_is_handed_out_where_one_is_set(db, make_experiment, participant) -> None:  # type: ignore[no-untyped-def]
    slug = make_experiment("coded", completion_code="PAID-2", screenout_code="OUT-2", min_median_rt_ms=0)
    fast = take_part(participant(slug, prolific_pid="fast"), db, rt_ms=10.0)
    assert fast["status"] == "completed"  # min_median_rt_ms = 0 turns the speed rule off
    out = take_part(participant(slug, prolific_pid="out"), db, rt_ms=900.0, wrong_catch=True)
    assert out["status"] == "screened_out" and out["completion_code"] == "OUT-2"


def test_refusals_carry_a_reason_for_the_page(client, db, make_experiment, participant) -> None:  # type: ignore[no-untyped-def]
    slug = make_experiment("refusals", completion_code="C")
    start = f"/api/v1/experiments/{slug}/participants"
    long_pid = client.post(start, json={"prolific_pid": "x" * 300})
    assert long_pid.status_code == 400 and "error" in long_pid.get_json()
    missing = client.post(start, json={})
    assert missing.status_code == 403 and missing.get_json()["reason"] == "no_pid"
    participant(slug, prolific_pid="dup")
    duplicate = client.post(start, json={"prolific_pid": "dup", "session_id": "OTHER"})
    assert duplicate.status_code == 409 and duplicate.get_json()["reason"] == "duplicate"
    with db.write() as s:
        get_experiment(s, slug).active = False
    closed = client.post(start, json={"prolific_pid": "late"})
    assert closed.status_code == 403 and closed.get_json()["reason"] == "closed"
    bad = client.post(start, json={"preview": "0" * 32})
    assert bad.status_code == 403 and bad.get_json()["reason"] == "bad_preview"


def test_participant_pages_speak_plainly(client, make_experiment) -> None:  # type: ignore[no-untyped-def]
    unknown = client.get("/run/no-such-study")
    html = unknown.get_data(as_text=True)
    assert unknown.status_code == 404 and "Study not found" in html and "app.prolific.com" in html
    slug = make_experiment("texts", completion_code="C", trials_per_participant=8)
    page = client.get(f"/run/{slug}?PROLIFIC_PID=abc").get_data(as_text=True)
    assert re.search(r"It takes about \d+ minutes", page) and "ten minutes" not in page
    assert 'data-fullscreen="required"' in page and 'data-image-px="' in page
    assert "computer program" not in page  # the debrief reaches the page only after the trials (the state carries it)
    for name in ("run.js", "run-api.js", "run-screens.js", "run-device.js", "run-trials.js"):
        script = client.get(f"/static/{name}").get_data(as_text=True)
        # No participant-facing sentence in the scripts: their strings are ids, keys and API paths.
        sentences = re.findall(r'"([A-Z][a-z]+ [a-z]+[^"]*)"', script)
        assert sentences == [], (name, sentences)
        assert "224" not in script.replace("|| 224", "")  # the image size comes from the set


def test_the_consent_estimate_follows_the_design() -> None:
    _, short = resolve_config({"trials_per_participant": 8})
    short["design_summary"] = {"trials_per_participant": 12}
    _, long = resolve_config({"fixation_ms": 1000, "iti_ms": 1000})
    long["design_summary"] = {"trials_per_participant": 200}
    assert estimate_minutes(short) == 2 + math.ceil(12 * (500 + 500 + 1800) / 60_000)
    assert estimate_minutes(long) == 2 + math.ceil(200 * 3800 / 60_000) and estimate_minutes(long) > 10


def test_preview_takes_no_list_and_void_frees_one(client, db, make_experiment, participant) -> None:  # type: ignore[no-untyped-def]
    slug = make_experiment("rehearse", completion_code="C")
    with db.session() as s:
        exp = get_experiment(s, slug)
    with db.write() as s:
        get_experiment(s, slug).active = False  # a rehearsal works before the study opens
    started = client.post(f"/api/v1/experiments/{slug}/participants", json={"preview": rehearsal.preview_key(exp)})
    assert started.status_code == 201 and started.get_json()["preview"] is True
    with db.write() as s:
        get_experiment(s, slug).active = True
    real = participant(slug, prolific_pid="tester")
    with db.session() as s:
        assert sum(list_counts(s, get_experiment(s, slug))) == 1  # the preview holds none
    real.prepare().answer_all()
    assert real.finish().get_json()["status"] == "completed"
    with db.session() as s:
        public_id = s.scalar(select(Participant.public_id).where(Participant.prolific_pid == "tester"))
    assert {r["participant"] for r in export_rows(db, slug)} == {public_id}

    with pytest.raises(Exception, match="no participant nobody"):
        rehearsal.void_participants(db, slug, [public_id, "nobody"], "typo")
    assert rehearsal.void_participants(db, slug, ["tester"], "test run before launch") == [public_id]
    with db.session() as s:
        assert list_counts(s, get_experiment(s, slug)) == [0] * get_experiment(s, slug).n_lists
    assert export_rows(db, slug) == []
    assert {r["participant_status"] for r in export_rows(db, slug, include_void=True)} == {"void"}


def test_the_export_carries_what_the_browser_measured(db, make_experiment, participant) -> None:  # type: ignore[no-untyped-def]
    slug = make_experiment("geometry", completion_code="C", fullscreen="recommended")
    p = participant(slug, prolific_pid="g")
    take_part(p, db, rt_ms=700.0, fullscreen_exits=2, ignored_keys=1)
    rows = export_rows(db, slug)
    assert set(GEOMETRY) | {"fullscreen_mode"} <= set(COLUMNS)
    for r in rows:
        assert {k: r[k] for k in GEOMETRY} == {**GEOMETRY, "fullscreen_exits": 2, "ignored_keys": 1}
        assert r["fullscreen_mode"] == "recommended"


@pytest.mark.parametrize("mode", FULLSCREEN_MODES)
def test_the_fullscreen_rule_of_the_analysis_follows_the_mode(mode: str) -> None:
    """A participant who answered outside fullscreen is excluded only where the page required fullscreen."""
    import pandas as pd

    from analysis.stats import participant_summary

    rows = []
    for who, inside in (("in", 1), ("out", 0)):
        for i in range(10):
            rows.append({"participant": who, "prolific_pid": who, "participant_status": "completed", "trial_index": i,
                         "kind": "catch" if i == 9 else "main", "condition": "catch" if i == 9 else "targets",
                         "chose_question_target": 1, "rt_ms": 800.0, "fullscreen": inside, "blurred": 0,
                         "blur_events": 0, "fullscreen_mode": mode})
    summary = participant_summary(pd.DataFrame(rows)).set_index("participant")
    assert not summary.loc["in", "excluded"]
    assert bool(summary.loc["out", "excluded"]) == (mode == "required")


@settings(max_examples=60, derandomize=True, deadline=None)
@given(n=st.integers(1, 400), data=st.data())
def test_wilson_interval_holds_the_proportion_within_bounds(n: int, data: Any) -> None:
    k = data.draw(st.integers(0, n))
    low, high = wilson(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0
    assert high - low < 1.0


def test_wilson_interval_at_small_n() -> None:
    low, high = wilson(2, 4)  # the normal approximation gives 0.010-0.990 here
    assert (round(low, 3), round(high, 3)) == (0.150, 0.850)
    assert wilson(0, 4)[0] == 0.0 and round(wilson(0, 4)[1], 3) == 0.490


def test_admin_shows_screening_preview_link_and_detail(admin_client, db, make_experiment, participant) -> None:  # type: ignore[no-untyped-def]
    slug = make_experiment("adminpilot", completion_code="C")
    take_part(participant(slug, prolific_pid="masher"), db, rt_ms=10.0)
    html = admin_client.get(f"/admin/experiments/{slug}").get_data(as_text=True)
    assert 'data-testid="preview-link"' in html and "preview=" in html
    assert re.search(r'data-testid="median-rt">10<', html) and "median rt 10 ms &lt; 250 ms" in html
    with db.session() as s:
        public_id = s.scalar(select(Participant.public_id).where(Participant.prolific_pid == "masher"))
    detail = admin_client.get(f"/admin/experiments/{slug}/participants/{public_id}").get_data(as_text=True)
    assert 'data-testid="participant-detail"' in detail and 'data-testid="void"' in detail
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', detail).group(1)
    done = admin_client.post(f"/admin/experiments/{slug}/participants/{public_id}/void",
                             data={"csrf_token": csrf, "reason": "scripted answers"})
    assert done.status_code == 302
    detail = admin_client.get(f"/admin/experiments/{slug}/participants/{public_id}").get_data(as_text=True)
    assert "scripted" in detail and 'data-testid="void"' not in detail.split("<h2>Answers")[0].split("</dl>")[1]
    assert 'class="long" data-testid="user-agent"' in html  # long user agents wrap (static/style.css)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(n_catch=st.integers(1, 60), data=st.data())
def test_the_page_pays_exactly_whom_the_analysis_keeps(n_catch: int, data: Any) -> None:
    """With the defaults, a participant screened out for catch failures is excluded by the analysis, and one who
    completes is kept: the experiment's rule and the analysis's rule are one."""
    from analysis.config import ExclusionRules
    from experiment.responses import screen_flags

    failures = data.draw(st.integers(0, n_catch))
    _, settings_ = resolve_config({"catch_trials": n_catch})
    screened = bool(screen_flags(settings_, failures, None, None))
    excluded = (n_catch - failures) / n_catch < ExclusionRules().min_catch_accuracy
    assert screened == excluded, (n_catch, failures, settings_["max_catch_failures"])
