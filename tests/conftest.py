"""Shared fixtures: a real stimulus set, real databases (SQLite and PostgreSQL), the app.

* ``stimulus_set`` builds a small real set once with ``stimuli.generate_set``
  (builtin photos, cat:truck, budgets 2 and 16, flip and noise controls) and keeps
  it in pytest's cache folder, so later sessions only re-validate it.
* ``database_url`` is parametrized over ``sqlite`` and ``postgresql``: every test
  that uses it (directly or through ``app``) runs on both. SQLite is a file in a
  temporary folder; PostgreSQL is the server on 127.0.0.1:5432 when one answers,
  otherwise a private server started for the session (initdb + pg_ctl on a free
  loopback port; ``ADVBIAS_TEST_PRIVATE_POSTGRES=1`` forces the private server).
  Each session creates its own uniquely named database and drops only that one
  at the end. Servers, ports and scratch databases come from ``tests/servers.py``.
* ``clock`` is the app's clock (``CLOCK``): tests let back-off windows pass with
  ``clock.advance(seconds)`` instead of sleeping.
"""
from __future__ import annotations

import os
import secrets
import shutil
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

MACHINE_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
TABLES = ("responses", "trials", "participants", "stimuli", "experiments", "admins", "throttle")
SET_PARAMS: dict[str, Any] = dict(
    images="builtin", pairs=[("cat", "truck")], eps=[2, 16], steps=1, models=["lite0"],
    controls=("flip", "noise"), limit=8, seed=0,
)


# --------------------------------------------------------------------------- stimulus set

@pytest.fixture(scope="session")
def stimulus_set(request: pytest.FixtureRequest) -> Path:
    """A small real stimulus set: 8 builtin photos x cat:truck x eps {2, 16}, flip and noise controls."""
    import hashlib
    import json

    import stimuli

    key = hashlib.sha256(json.dumps(SET_PARAMS, sort_keys=True).encode()).hexdigest()[:12]
    out = Path(request.config.cache.mkdir(f"advbias-stimulus-set-{key}")) / "set"
    try:
        return Path(stimuli.generate_set(out=out, progress=False, **SET_PARAMS))
    except (ValueError, FileNotFoundError):  # a stale cached set from older code: build it afresh
        shutil.rmtree(out, ignore_errors=True)
        return Path(stimuli.generate_set(out=out, progress=False, **SET_PARAMS))


# --------------------------------------------------------------------------- PostgreSQL (tests/servers.py)

@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """``host:port`` of a PostgreSQL server that accepts user postgres without a password."""
    from servers import PrivatePostgres, postgres_answers

    if os.environ.get("ADVBIAS_TEST_PRIVATE_POSTGRES") != "1" and postgres_answers(MACHINE_POSTGRES):
        yield "127.0.0.1:5432"
        return
    try:
        private = PrivatePostgres(fsync=False, max_connections=100)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    with private:
        yield private.server


@contextmanager
def scratch_postgres_database(server: str) -> Iterator[str]:
    """A uniquely named database on ``server`` ("host:port"), dropped after (:func:`servers.scratch_database`)."""
    from servers import scratch_database

    with scratch_database(f"postgresql://postgres@{server}/postgres", prefix="advbias_test") as url:
        yield url


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An upgraded database for this session, on SQLite and on PostgreSQL."""
    from experiment.db import Database, upgrade

    def upgraded(url: str) -> str:
        db = Database(url)
        upgrade(db.engine)
        db.dispose()
        return url

    if request.param == "sqlite":
        yield upgraded(f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'advbias.db'}")
        return
    with scratch_postgres_database(request.getfixturevalue("postgres_server")) as url:
        yield upgraded(url)


@pytest.fixture(scope="session")
def _truncators() -> Iterator[dict[str, Any]]:
    engines: dict[str, Any] = {}
    yield engines
    for db in engines.values():
        db.dispose()


@pytest.fixture
def clean_database(database_url: str, _truncators: dict[str, Any]) -> str:
    """The session's database, emptied (the schema stays) before the test."""
    from sqlalchemy import text

    from experiment.db import Database

    db = _truncators.get(database_url)
    if db is None:
        db = _truncators[database_url] = Database(database_url)
    with db.engine.begin() as conn:
        if db.is_sqlite:
            for table in TABLES:
                conn.execute(text(f"DELETE FROM {table}"))
        else:
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    return database_url


@pytest.fixture(scope="session")
def instance_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One instance folder per session: the content-addressed image store is shared by all tests."""
    return tmp_path_factory.mktemp("instance")


class ManualClock:
    """A clock that stands still at the test's start until :meth:`advance` moves it.

    Handed to the app as ``CLOCK`` (login back-off and start-limit windows,
    :mod:`experiment.throttle`): a test of a 2 s pause takes no 2 s, and a slow, loaded
    machine cannot make a pause end early.
    """

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> ManualClock:
    """This test's clock (the app's ``CLOCK``); ``clock.advance(s)`` moves it forward."""
    return ManualClock()


@pytest.fixture
def app_config(clean_database: str, instance_dir: Path, clock: ManualClock) -> dict[str, Any]:
    return {
        "CLOCK": clock,
        "TESTING": True,
        "DATABASE_URL": clean_database,
        "INSTANCE_PATH": str(instance_dir),
        "SECRET_KEY": "test-" + secrets.token_hex(8),
        "START_LIMIT": "0",  # tests start many participants from one address; tests/test_identity.py sets one
    }


@pytest.fixture
def app(app_config: dict[str, Any]):  # type: ignore[no-untyped-def]
    from experiment import create_app

    application = create_app(app_config)
    yield application
    application.extensions["advbias"].db.dispose()


@pytest.fixture
def app_server(app: Any) -> Iterator[str]:
    """The test's app served over real HTTP on a free port, in a thread (for the HTTP participant client)."""
    import threading

    from werkzeug.serving import make_server

    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


@pytest.fixture
def db(app):  # type: ignore[no-untyped-def]
    return app.extensions["advbias"].db


@pytest.fixture
def make_experiment(app, stimulus_set: Path) -> Callable[..., str]:  # type: ignore[no-untyped-def]
    """Create an experiment from the session's stimulus set; keyword arguments are TOML config keys."""
    from experiment.study import create_experiment

    state = app.extensions["advbias"]

    def make(slug: str = "study", **config: Any) -> str:
        exp, _design, created = create_experiment(state.db, slug, stimulus_set, config, state.store)
        assert created
        return exp.slug

    return make


@pytest.fixture
def experiment(make_experiment: Callable[..., str]) -> str:
    """The default test experiment: targets at eps 2 and 16, 8 main + 2 practice + 2 catch trials."""
    return make_experiment("study", completion_code="DONE-1234", screenout_code="OUT-5678")


# --------------------------------------------------------------------------- a participant, through the API

class ParticipantDriver:
    """Drives one participant through the JSON API the way run.js does.

    Without a ``prolific_pid`` it invents one (studies take part through Prolific by
    default); ``anonymous=True`` starts without one.
    """

    def __init__(self, client: Any, slug: str, prolific_pid: str | None = None, anonymous: bool = False) -> None:
        self.client = client
        self.slug = slug
        if prolific_pid is None and not anonymous:
            prolific_pid = "P" + secrets.token_hex(8)
        self.prolific_pid = prolific_pid
        body = {"prolific_pid": prolific_pid, "study_id": "STUDY", "session_id": "SESSION"} if prolific_pid else {}
        response = client.post(f"/api/v1/experiments/{slug}/participants", json=body)
        assert response.status_code in (200, 201), response.get_json()
        self.created = response.status_code == 201
        self.state = response.get_json()
        self.token = self.state["token"]

    @property
    def base(self) -> str:
        return f"/api/v1/participants/{self.token}"

    def prepare(self) -> "ParticipantDriver":
        assert self.client.post(f"{self.base}/consent", json={"consent": True}).status_code == 200
        check = {"window_width": 1280, "window_height": 800, "refresh_hz": 60.0, "device_pixel_ratio": 1.0}
        response = self.client.post(f"{self.base}/browser-check", json=check)
        assert response.status_code == 200, response.get_json()
        self.state = response.get_json()
        return self

    def trials(self, start: int = 0) -> list[dict[str, Any]]:
        response = self.client.get(f"{self.base}/trials?start={start}&count=500")
        assert response.status_code == 200, response.get_json()
        return response.get_json()["trials"]

    def answer(self, trial: dict[str, Any], response: str = "left", key: str | None = None, **extra: Any):  # type: ignore[no-untyped-def]
        body = {
            "trial_id": trial["id"], "idempotency_key": key or uuid.uuid4().hex, "response": response,
            "response_source": "key", "rt_ms": 612.5, "onset_frame_ms": 1000.0 + trial["index"],
            "offset_frame_ms": None, "fullscreen": True, "blurred": False, "blur_events": 0, **extra,
        }
        return self.client.post(f"{self.base}/responses", json=body)

    def answer_all(self, choose: Callable[[dict[str, Any]], str] = lambda t: "left") -> list[dict[str, Any]]:
        trials = self.trials(self.get_state()["next_index"])
        for trial in trials:
            response = self.answer(trial, choose(trial))
            assert response.status_code == 200, response.get_json()
        return trials

    def get_state(self) -> dict[str, Any]:
        response = self.client.get(self.base)
        assert response.status_code == 200
        self.state = response.get_json()
        return self.state

    def finish(self, text: str = "nothing unusual"):  # type: ignore[no-untyped-def]
        return self.client.post(f"{self.base}/finish", json={"text": text})


@pytest.fixture
def participant(client) -> Callable[..., ParticipantDriver]:  # type: ignore[no-untyped-def]
    def make(slug: str, prolific_pid: str | None = None, anonymous: bool = False) -> ParticipantDriver:
        return ParticipantDriver(client, slug, prolific_pid, anonymous)

    return make


# --------------------------------------------------------------------------- a real server (gunicorn)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


class LiveStudy:
    """A real ``advbias serve --workers 2`` (gunicorn) on a free loopback port, with its database.

    Tests create their own experiments (unique slugs) in the session's database, so they do
    not need an empty database and the server keeps running across a test module.
    """

    def __init__(self, server: Any, database_url: str, stimulus_set: Path) -> None:
        self.server = server
        self.database_url = database_url
        self.stimulus_set = stimulus_set
        self._db: Any = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def db(self) -> Any:
        """An in-test connection to the server's database (for checks, never for the server's work)."""
        if self._db is None:
            from experiment.db import Database

            self._db = Database(self.database_url)
        return self._db

    def create_experiment(self, **config: Any) -> str:
        """Create an experiment from the session's stimulus set, as ``advbias experiment create`` does."""
        from experiment.study import create_experiment

        slug = f"live-{uuid.uuid4().hex[:10]}"
        config.setdefault("completion_code", "LIVE-DONE")
        create_experiment(self.db, slug, self.stimulus_set, config, self.server.instance / "stimuli")
        return slug

    def export(self, slug: str, out: Path) -> list[dict[str, str]]:
        """Write the experiment's CSV export to ``out`` (kept as an artifact) and read it back."""
        import csv

        from experiment.export import write_export

        out.parent.mkdir(parents=True, exist_ok=True)
        write_export(self.db, slug, out)
        with out.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
            self._db = None


@pytest.fixture(scope="module")
def live_study(database_url: str, stimulus_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStudy]:
    """A gunicorn server (2 workers) on the session's database, one per test module and backend."""
    from servers import ServerProcess

    instance = tmp_path_factory.mktemp("live-instance")
    server = ServerProcess(instance, database_url, workers=2, threads=4)
    server.start()
    study = LiveStudy(server, database_url, stimulus_set)
    try:
        yield study
    finally:
        server.stop()
        study.close()
