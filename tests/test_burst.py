"""Bursts of starts: the gate in front of participant starts (experiment/admission.py).

A newcomer refused while the process is busy starting others gets 503 with the moment to come
back, and nothing is stored for it; participants already in the study go on answering; through a
real gunicorn server a burst of newcomers all start in the end, with the lists exactly balanced
and nothing lost. How much the gate protects answers is measured, not tested:
``python tests/loadtest.py --burst 150`` (docs/benchmarks.md).
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import func, select

from experiment.admission import MIN_RETRY_MS, StartGate
from experiment.models import Experiment, Participant, Trial


def test_gate_admits_one_start_and_schedules_the_others() -> None:
    gate = StartGate(concurrent=1, max_waiting=0, first_estimate_s=0.03)
    assert gate.try_enter() is None  # the slot
    delays = [gate.try_enter() for _ in range(5)]  # everyone else is told when to come back ...
    assert all(d is not None and d >= MIN_RETRY_MS for d in delays)
    assert all(b - a >= 25 for a, b in zip(delays[1:], delays[2:]))  # ... one after another, not all at once
    gate.leave(time.monotonic() - 0.03)
    assert gate.try_enter() is None and gate.admitted == 1 and gate.refused == 5


def test_a_waiting_start_gets_the_slot_when_it_frees() -> None:
    gate = StartGate(concurrent=1, max_waiting=1, max_wait_s=2.0)
    assert gate.try_enter() is None
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(gate.try_enter()))
    waiter.start()
    time.sleep(0.1)
    assert gate.try_enter() is not None  # the one waiting place is taken: refused at once
    began = time.monotonic()
    gate.leave(began)
    waiter.join(5)
    assert got == [None]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_refused_start_is_told_when_to_return_and_answers_go_on(app, client, db, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    running = participant(experiment, prolific_pid="running").prepare()
    trials = running.trials()
    gate = app.extensions["advbias"].start_gate
    assert gate.try_enter() is None  # another start holds this process's slot
    try:
        with db.session() as s:
            before = s.scalar(select(func.count()).select_from(Participant))
        reply = client.post(f"/api/v1/experiments/{experiment}/participants", json={"prolific_pid": "newcomer"})
        assert reply.status_code == 503
        body = reply.get_json()
        assert body["retry_after_ms"] >= MIN_RETRY_MS and "retry" in body["error"]
        assert int(reply.headers["Retry-After"]) >= 1 and reply.headers["Cache-Control"] == "no-store"
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Participant)) == before
        for trial in trials[:3]:  # the gate is for starts only
            assert running.answer(trial).status_code == 200
        assert client.get(running.base).status_code == 200
    finally:
        gate.leave(time.monotonic())
    again = client.post(f"/api/v1/experiments/{experiment}/participants", json={"prolific_pid": "newcomer"})
    assert again.status_code == 201


def test_burst_of_starts_through_gunicorn(live_study) -> None:  # type: ignore[no-untyped-def]
    """40 newcomers at one instant while 4 participants answer: all start, lists exactly balanced, nothing lost."""
    from advbias.client import HttpClient, Participant as Simulated

    from servers import compare, stored_answers

    # Screened-out participants free their slot (the default), so a runner failing a catch trial midway would
    # move a list's count after the newcomers chose theirs: kept fixed here, so that exact balance can be asserted.
    slug = live_study.create_experiment(screened_out_frees_slot=False)
    runners = [Simulated(slug, f"burst-run-{i}") for i in range(4)]
    newcomers = [Simulated(slug, f"burst-new-{i:02d}") for i in range(40)]
    gate = threading.Barrier(len(newcomers) + len(runners))
    retries: list[int] = []
    failures: list[BaseException] = []

    def take_part(p: Simulated, only_start: bool) -> None:
        client = HttpClient(live_study.url, retry_for=60.0)  # comes back when a 503 says so
        try:
            gate.wait()
            method, path, body, _ = p.next_request()
            reply = client.request(method, path, body)
            retries.append(reply.retries)
            p.handle(reply)
            if not only_start:
                p.run(client)
        except BaseException as exc:  # reported below
            failures.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=take_part, args=(p, p in newcomers), daemon=True)
               for p in runners + newcomers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures[:3]
    assert all(p.token for p in newcomers) and all(p.done for p in runners)
    with live_study.db.session() as s:
        exp_id = s.scalar(select(Experiment.id).where(Experiment.slug == slug))
        n_lists = s.scalar(select(Experiment.n_lists).where(Experiment.id == exp_id))
        lists = Counter(s.scalars(select(Participant.list_index).where(Participant.experiment_id == exp_id)))
    # 44 participants over the lists: the least-filled list always wins, so counts differ by one at most
    counts = [lists.get(i, 0) for i in range(n_lists)]
    assert sum(counts) == 44 and max(counts) - min(counts) <= 1, counts
    check = compare([a for p in runners for a in p.acks], stored_answers(live_study.database_url, slug))
    assert check["lost"] == 0 and check["duplicated"] == 0 and check["acknowledged"] == 4 * 12


def test_a_start_answers_with_the_state_it_stored(client, db, experiment) -> None:  # type: ignore[no-untyped-def]
    """A new participant's state is built from what the start knows, without reading it back: it must be
    exactly what the database holds (the same as a later ``GET``), for a new and for a resumed participant."""
    url = f"/api/v1/experiments/{experiment}/participants"
    created = client.post(url, json={"prolific_pid": "fresh", "study_id": "ST", "session_id": "S1"})
    assert created.status_code == 201
    state = created.get_json()
    stored = client.get(f"/api/v1/participants/{state['token']}")
    assert stored.status_code == 200 and stored.get_json() == state
    with db.session() as s:
        n_practice = s.scalar(select(func.count()).select_from(Trial).where(Trial.kind == "practice"))
    assert state["n_practice"] == n_practice > 0 and state["n_trials"] == 12 and state["status"] == "in_progress"
    resumed = client.post(url, json={"prolific_pid": "fresh", "study_id": "ST", "session_id": "S1"})
    assert resumed.status_code == 200 and resumed.get_json() == state
