"""The server's own clock per answer (``server_rt_ms``) and the CSV's neutralised identifiers.

``server_rt_ms`` is the time from the later of the trial's delivery (the trial list)
and the previous answer, to this answer, measured by the server: a browser cannot
report it. A human taking the study with the page's fixation and inter-trial interval
cannot go below those delays; a scripted client answering at once shows a few ms.
"""
from __future__ import annotations

import csv
import io
import time

import pandas as pd
from sqlalchemy import select

from advbias.export import COLUMNS, FLOAT_COLUMNS
from experiment.export import export_bytes, export_frame
from experiment.models import Response, Trial


def test_server_rt_is_the_time_the_server_gave_each_trial(db, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    p = participant(experiment).prepare()
    trials = p.trials()
    waits = [0.25, 0.05, 0.4]
    for trial, wait in zip(trials, waits):
        time.sleep(wait)
        assert p.answer(trial).status_code == 200
    with db.session() as s:
        stored = s.execute(
            select(Trial.index, Response.server_rt_ms).join(Response, Response.trial_id == Trial.id).order_by(Trial.index)
        ).all()
    assert [i for i, _ in stored] == [0, 1, 2]
    for (index, rt), wait in zip(stored, waits):
        assert wait * 1000 <= rt < wait * 1000 + 1500, (index, rt)
    frame = export_frame(db, experiment)
    assert "server_rt_ms" in FLOAT_COLUMNS and COLUMNS[-1] == "server_rt_ms"
    assert frame["server_rt_ms"].dtype == "float64" and frame["server_rt_ms"].notna().all()


def test_a_scripted_client_shows_in_server_rt(db, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    """The reported rt_ms says 612 ms; the server saw each answer arrive a few ms after the previous one."""
    p = participant(experiment).prepare()
    p.answer_all()
    done = p.finish().get_json()
    assert done["status"] == "completed"  # flagged, not refused: see docs/export.md (server_rt_ms)
    frame = export_frame(db, experiment)
    assert (frame["rt_ms"] == 612.5).all()
    assert frame["server_rt_ms"].median() < 300  # far below the 500 ms fixation a browser must show first


def test_a_trial_is_timed_from_its_first_delivery(db, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    p = participant(experiment).prepare()
    first = p.trials()
    time.sleep(0.3)
    p.trials()  # a second listing (a reload) does not restart the clock
    assert p.answer(first[0]).status_code == 200
    with db.session() as s:
        assert s.scalar(select(Response.server_rt_ms)) >= 300


def test_identifiers_that_look_like_formulas_are_neutralised_in_the_csv(db, experiment, client) -> None:  # type: ignore[no-untyped-def]
    body = {"prolific_pid": "-2-3", "study_id": "-cmd", "session_id": "--x"}
    token = client.post(f"/api/v1/experiments/{experiment}/participants", json=body).get_json()["token"]
    base = f"/api/v1/participants/{token}"
    client.post(f"{base}/consent", json={"consent": True})
    client.post(f"{base}/browser-check", json={"window_width": 1280, "window_height": 800})
    trial = client.get(f"{base}/trials").get_json()["trials"][0]
    answer = {"trial_id": trial["id"], "idempotency_key": "k" * 12, "response": "left", "rt_ms": 500}
    assert client.post(f"{base}/responses", json=answer).status_code == 200
    rows = list(csv.DictReader(io.StringIO(export_bytes(db, experiment, "csv").decode())))
    assert (rows[0]["prolific_pid"], rows[0]["study_id"], rows[0]["session_id"]) == ("'-2-3", "'-cmd", "'--x")
    # Parquet keeps the identifiers as they were sent (no spreadsheet runs Parquet cells)
    frame = pd.read_parquet(io.BytesIO(export_bytes(db, experiment, "parquet")))
    assert frame.loc[0, "prolific_pid"] == "-2-3"


def test_min_median_trial_ms_screens_out_a_scripted_client(db, make_experiment, participant) -> None:  # type: ignore[no-untyped-def]
    slug = make_experiment("guarded", completion_code="REAL", screenout_code="FAST", min_median_trial_ms=1000)
    bot = participant(slug).prepare()
    bot.answer_all()
    state = bot.finish().get_json()
    assert state["status"] == "screened_out" and state["completion_code"] == "FAST"
    # a participant who takes the page's time for each trial completes (a short floor stands in for it here)
    paced_slug = make_experiment("paced", completion_code="REAL", min_median_trial_ms=40)
    human = participant(paced_slug).prepare()
    for trial in human.trials():
        time.sleep(0.05)
        assert human.answer(trial).status_code == 200
    assert human.finish().get_json()["completion_code"] == "REAL"


def test_without_a_screen_out_code_a_too_fast_client_gets_no_code(make_experiment, participant) -> None:  # type: ignore[no-untyped-def]
    slug = make_experiment("guarded-nocode", completion_code="REAL", min_median_trial_ms=1000)
    bot = participant(slug).prepare()
    bot.answer_all()
    state = bot.finish().get_json()
    assert state["status"] == "screened_out" and state["completion_code"] is None
