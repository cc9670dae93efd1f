"""A server killed with SIGKILL while participants answer loses nothing it acknowledged.

Simulated participants take the study over HTTP against gunicorn (2 workers), each on its own
thread and keep-alive connection, retrying any request whose connection fails with the same
body (the same idempotency key), as the browser does. While they answer, the whole server
process group is killed with SIGKILL (no shutdown handlers, no flush), and a fresh server is
started on the same port and database, three times during the run. Checked, on SQLite and
PostgreSQL:

* right after each kill, before the restart: every answer the server had acknowledged is in
  the database;
* after the restarts every participant finishes; each trial is stored exactly once and every
  stored answer was acknowledged (a retry of an answer stored just before the kill is
  answered from the stored copy, never stored twice).
"""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from advbias.client import HttpClient, Participant as SimulatedParticipant
from servers import compare, stored_answers

pytestmark = pytest.mark.slow

PARTICIPANTS = 8
KILL_AT = (0.2, 0.45, 0.7)  # fractions of all answers acknowledged when the server is killed


def _total_acks(people: list[SimulatedParticipant]) -> int:
    return sum(len(p.acks) for p in people)


def test_sigkill_loses_no_acknowledged_answer(live_study: Any) -> None:
    slug = live_study.create_experiment(trials_per_participant=8, practice_trials=2, catch_trials=2)
    people = [SimulatedParticipant(slug, f"crash-{i}") for i in range(PARTICIPANTS)]
    failures: list[BaseException] = []

    def take_part(p: SimulatedParticipant) -> None:
        client = HttpClient(live_study.url, retry_for=90.0)
        try:
            p.run(client)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=take_part, args=(p,), daemon=True) for p in people]
    for t in threads:
        t.start()
    n_trials = 12
    total = PARTICIPANTS * n_trials
    in_flight: set[str] = set()  # keys stored by a killed server whose reply never arrived
    for fraction in KILL_AT:
        deadline = time.monotonic() + 60
        while _total_acks(people) < total * fraction and time.monotonic() < deadline and not failures:
            time.sleep(0.005)
        assert not failures, failures

        live_study.server.kill()
        time.sleep(0.5)  # replies that arrived before the kill are processed; clients meet a closed port
        # What was acknowledged when the server died (participants keep retrying meanwhile).
        acked_at_kill = [a for p in people for a in list(p.acks)]
        assert 0 < len(acked_at_kill) < total, "the kill must land in the middle of the study"
        stored_at_kill = stored_answers(live_study.database_url, slug)
        at_kill = compare(acked_at_kill, stored_at_kill)
        assert at_kill["lost"] == 0 and at_kill["duplicated"] == 0, at_kill
        in_flight |= {key for *_, key in stored_at_kill["rows"]} - {a.key for a in acked_at_kill}
        live_study.server.start()

    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "participants did not finish after the restart"
    assert not failures, failures
    # Every participant reached an end: completed ones hold the code; the simulated chooser alternates sides,
    # so some fail the catch trials and are screened out (no screen-out code is set by default).
    assert all(p.done for p in people)
    assert all(bool(p.completion_code) == (p.status == "completed") for p in people), [p.status for p in people]

    acks = [a for p in people for a in p.acks]
    final = compare(acks, stored_answers(live_study.database_url, slug))
    assert final == {"acknowledged": total, "stored": total, "lost": 0,
                     "unacknowledged_stored": 0, "duplicated": 0}, final
    for p in people:
        assert len(p.trials) == n_trials and [a.index for a in p.acks] == list(range(n_trials))
    # Answers stored just before a kill whose reply was lost came back as replays, not as new rows.
    assert in_flight <= {a.key for a in acks if a.replayed}
    stored = stored_answers(live_study.database_url, slug)
    assert stored["statuses"].get("in_progress", 0) == 0
    assert sorted(stored["participants_per_pid"].values()) == [1] * PARTICIPANTS
