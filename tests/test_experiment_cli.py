"""The experiment's commands: db upgrade, experiment create, admin set-password, serve, export.

Bad input is one line on stderr (``advbias: error: ...``) and exit status 2; the
export has the documented columns with consistent values; the app refuses to
start on a database whose schema is not at the newest migration.
"""
from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select, text

from conftest import scratch_postgres_database
from advbias.cli import main
from experiment.db import Database, SchemaError, downgrade, head_revision, upgrade
from experiment.export import COLUMNS

#: The columns the analysis relies on (docs/export.md); the export may add more.
REQUIRED = (
    "experiment participant prolific_pid list trial_index kind condition question eps source pair_key "
    "left_stimulus_id right_stimulus_id left_target right_target response chosen_target chose_question_target "
    "rt_ms presentation_ms onset_frame_ms refresh_hz fullscreen blurred server_received_at"
).split()


@pytest.fixture
def cli(monkeypatch, capsys, instance_dir):  # type: ignore[no-untyped-def]
    """Run ``advbias ARGS`` in-process; returns (status, stdout, stderr). Settings changes are undone."""
    monkeypatch.setenv("ADVBIAS_INSTANCE_PATH", str(instance_dir))
    monkeypatch.setenv("ADVBIAS_DATABASE_URL", "sqlite:///unused.db")

    def run(*args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        status = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return status, out, err

    return run


def one_line_error(err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("advbias: error: "), err
    assert fragment in lines[0], lines[0]


# --------------------------------------------------------------------------- schema

@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request, tmp_path):  # type: ignore[no-untyped-def]
    """An empty database of its own (the schema tests change the schema itself)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    with scratch_postgres_database(request.getfixturevalue("postgres_server")) as url:
        yield url


def test_app_refuses_an_out_of_date_schema(fresh_url, cli, instance_dir) -> None:  # type: ignore[no-untyped-def]
    from experiment import create_app

    config = {"DATABASE_URL": fresh_url, "INSTANCE_PATH": str(instance_dir), "SECRET_KEY": "k"}
    with pytest.raises(SchemaError, match="has no advbias schema: run `advbias db upgrade`"):
        create_app(config)
    status, _, err = cli("export", "anything", "--out", instance_dir / "x.csv", "--database-url", fresh_url)
    assert status == 2
    one_line_error(err, "run `advbias db upgrade`")

    status, out, _ = cli("db", "upgrade", "--database-url", fresh_url)
    assert status == 0 and f"upgraded from empty to revision {head_revision()}" in out
    status, out, _ = cli("db", "upgrade", "--database-url", fresh_url)
    assert status == 0 and "is up to date" in out
    app = create_app(config)
    assert app.test_client().get("/api/v1/health").get_json()["schema"] == head_revision()
    app.extensions["advbias"].db.dispose()

    db = Database(fresh_url)
    try:
        downgrade(db.engine, "base")
        with pytest.raises(SchemaError, match="run `advbias db upgrade`"):
            create_app(config)
        upgrade(db.engine)
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'ffff9999'"))
        with pytest.raises(SchemaError, match="newer than this version of advbias"):
            create_app(config)
        status, _, err = cli("serve", "--database-url", fresh_url, "--port", "5999")
        assert status == 2
        one_line_error(err, "newer than this version")
    finally:
        db.dispose()


def test_migrations_match_the_models(database_url) -> None:  # type: ignore[no-untyped-def]
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from experiment.models import Base

    db = Database(database_url)
    try:
        with db.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        db.dispose()


def test_sqlite_is_tuned_for_concurrent_durable_writes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path / 'tuned.db'}")
    try:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        db.dispose()
    with pytest.raises(ValueError, match="unsupported database 'mysql'"):
        Database("mysql://localhost/x")
    with pytest.raises(ValueError, match="in-memory"):
        Database("sqlite://")


# --------------------------------------------------------------------------- experiment create

def test_experiment_create(cli, clean_database, stimulus_set, tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = ("--database-url", clean_database)
    status, out, err = cli("experiment", "create", "--stimuli", stimulus_set, "--name", "pilot", *base,
                           "--base-url", "https://study.example.org/")
    assert status == 0, err
    assert "experiment pilot created" in out
    assert "8 main + 2 practice + 2 catch trials per participant; 8 counterbalancing lists" in out
    assert "participant URL: https://study.example.org/run/pilot\n" in out
    assert ("https://study.example.org/run/pilot?PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}"
            "&SESSION_ID={{%SESSION_ID%}}") in out
    # idempotent: the same set and configuration again changes nothing
    status, again, _ = cli("experiment", "create", "--stimuli", stimulus_set, "--name", "pilot", *base)
    assert status == 0 and "already exists" in again
    status, listing, _ = cli("experiment", "list", *base)
    assert status == 0 and listing.startswith("pilot\topen\t0 participants")

    config = tmp_path / "exp.toml"
    config.write_text('conditions = ["targets", "vs_noise"]\nbudgets = [16]\npresentation = 150\n'
                      'completion_code = "C0DE"\nquestion = "Which picture looks more like a {category}?"\n')
    status, out, err = cli("experiment", "create", "--stimuli", stimulus_set, "--name", "pilot", "--config", config, *base)
    assert status == 2
    one_line_error(err, "already exists with a different configuration")
    status, out, err = cli("experiment", "create", "--stimuli", stimulus_set, "--name", "noise", "--config", config, *base)
    assert status == 0, err
    assert "trial types targets, vs_noise" in out and "completion code: C0DE" in out


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (None, ["--name", "x", "--stimuli", "{missing}"], "does not exist"),
        (None, ["--name", "Bad Name", "--stimuli", "{set}"], "must be 1-63 lowercase letters"),
        ("unknown_key", ["--name", "x", "--stimuli", "{set}", "--config", "{config}"], "unknown config key(s) colour"),
        ("bad_toml", ["--name", "x", "--stimuli", "{set}", "--config", "{config}"], "is not valid TOML"),
        ("bad_trials", ["--name", "x", "--stimuli", "{set}", "--config", "{config}"], "must be a positive multiple of 4"),
        ("bad_code", ["--name", "x", "--stimuli", "{set}", "--config", "{config}"], "completion_code must be"),
        (None, ["--name", "x", "--stimuli", "{set}", "--config", "{missing}"], "does not exist"),
        ("corrupt_image", ["--name", "x", "--stimuli", "{copy}"], "does not match its sha256"),
        ("no_column", ["--name", "x", "--stimuli", "{copy}"], "lacks the column(s) pair_key"),
        ("no_set_json", ["--name", "x", "--stimuli", "{copy}"], "set.json is missing"),
    ],
)
def test_experiment_create_bad_input(cli, clean_database, stimulus_set, tmp_path, setup, args, message) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "exp.toml"
    copy = tmp_path / "set"
    contents = {
        "unknown_key": 'colour = "red"\n',
        "bad_toml": "conditions = [\n",
        "bad_trials": "trials_per_participant = 6\n",
        "bad_code": 'completion_code = "has spaces"\n',
    }
    if setup in contents:
        config.write_text(contents[setup])
    if setup in ("corrupt_image", "no_column", "no_set_json"):
        shutil.copytree(stimulus_set, copy)
        if setup == "corrupt_image":
            image = sorted((copy / "images").glob("*.png"))[3]
            data = bytearray(image.read_bytes())
            data[-20] ^= 0xFF
            image.write_bytes(bytes(data))
        elif setup == "no_column":
            rows = list(csv.DictReader((copy / "manifest.csv").open()))
            fields = [f for f in rows[0] if f != "pair_key"]
            with (copy / "manifest.csv").open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fields, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
        else:
            (copy / "set.json").unlink()
    filled = [a.format(missing=tmp_path / "nowhere", set=stimulus_set, config=config, copy=copy) for a in args]
    status, out, err = cli("experiment", "create", *filled, "--database-url", clean_database)
    assert status == 2 and out == ""
    one_line_error(err, message)
    status, listing, _ = cli("experiment", "list", "--database-url", clean_database)
    assert "no experiments yet" in listing  # nothing half-created


# --------------------------------------------------------------------------- admin, serve

def test_admin_set_password(cli, clean_database, app) -> None:  # type: ignore[no-untyped-def]
    status, _, err = cli("admin", "set-password", "--password-stdin", "--database-url", clean_database, stdin="short\n")
    assert status == 2
    one_line_error(err, "at least 10 characters")
    status, out, _ = cli("admin", "set-password", "--generate", "--database-url", clean_database)
    assert status == 0
    password = out.strip().rsplit(": ", 1)[1]
    client = app.test_client()
    import re

    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/login").get_data(as_text=True)).group(1)
    reply = client.post("/admin/login", data={"username": "admin", "password": password, "csrf_token": token})
    assert reply.status_code == 302
    status, out, _ = cli("admin", "set-password", "--password-stdin", "--database-url", clean_database,
                         stdin="a much longer password\n")
    assert status == 0 and "set" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "70000"], "port 70000 is outside 1..65535"),
        (["--workers", "0"], "--workers must be between 1 and 256"),
        (["--threads", "0"], "--threads must be between 1 and 256"),
    ],
)
def test_serve_bad_input(cli, args, message) -> None:  # type: ignore[no-untyped-def]
    status, _, err = cli("serve", *args)
    assert status == 2
    one_line_error(err, message)


# --------------------------------------------------------------------------- export

def test_export_csv_and_parquet(cli, clean_database, make_experiment, participant, db, tmp_path) -> None:  # type: ignore[no-untyped-def]
    slug = make_experiment("all", conditions=["targets", "vs_clean", "vs_flip", "vs_noise"], budgets=[16],
                           presentation=100)
    finished = participant(slug, prolific_pid="P-1").prepare()
    finished.answer_all(lambda t: "left" if t["index"] % 2 else "right")
    finished.finish()
    partial = participant(slug, prolific_pid="P-2").prepare()
    for t in partial.trials()[:3]:
        partial.answer(t, "left")
    participant(slug, prolific_pid="P-3")  # started, nothing answered: no rows

    frames = {}
    for suffix in ("csv", "parquet"):
        out = tmp_path / f"trials.{suffix}"
        status, printed, err = cli("export", slug, "--out", out, "--database-url", clean_database)
        assert status == 0, err
        assert f"wrote 15 answered trial(s) of {slug}" in printed
        frames[suffix] = (pd.read_csv(out, keep_default_na=False, na_values=[""]) if suffix == "csv"
                          else pd.read_parquet(out))
    csv_frame, parquet = frames["csv"], frames["parquet"]
    assert list(csv_frame.columns) == list(parquet.columns) == list(COLUMNS)
    assert set(REQUIRED) <= set(COLUMNS)
    assert len(parquet) == 15
    assert parquet[["participant", "trial_index"]].duplicated().sum() == 0
    for col in ("eps", "list", "trial_index", "chose_question_target", "fullscreen", "blurred"):
        assert str(parquet[col].dtype) == "int64"
        assert (csv_frame[col].to_numpy() == parquet[col].to_numpy()).all()
    for row in parquet.to_dict("records"):
        assert row["experiment"] == slug and row["prolific_pid"] in ("P-1", "P-2")
        assert row["chose_question_target"] == int(row["response"] == row["target_side"])
        chosen = row["left_target"] if row["response"] == "left" else row["right_target"]
        assert row["chosen_target"] == chosen
        assert row["onset_frame_ms"] == 1000.0 + row["trial_index"] and row["rt_ms"] == 612.5
        assert row["presentation_ms"] == 100.0 and row["refresh_hz"] == 60.0 and row["fullscreen"] == 1
        assert row["question"] == f"Which image is more {row['question_target']}-like?"
        assert datetime.fromisoformat(row["server_received_at"].replace("Z", "+00:00")).tzinfo is not None
        if row["kind"] == "catch":
            assert row["condition"] == "catch" and row["eps"] == 0 and row["pair_key"] == ""
            assert row["left_condition"] == row["right_condition"] == "clean"
        else:
            assert row["eps"] == 16 and row["pair_key"].endswith(":cat:truck:16")
            toward = row["left_condition"] if row["target_side"] == "left" else row["right_condition"]
            other = row["right_condition"] if row["target_side"] == "left" else row["left_condition"]
            assert toward == "adversarial"
            assert other == {"targets": "adversarial", "vs_clean": "clean", "vs_flip": "flip",
                             "vs_noise": "noise"}[row["condition"]]
    statuses = dict(zip(parquet["prolific_pid"], parquet["participant_status"]))
    assert statuses["P-2"] == "in_progress" and statuses["P-1"] in ("completed", "screened_out")
    main_rows = parquet[parquet["kind"] == "main"]
    assert set(main_rows["condition"]) == {"targets", "vs_clean", "vs_flip", "vs_noise"}
    assert set(parquet["kind"]) == {"practice", "main", "catch"}

    # the exported list and seed rebuild each participant's exact sequence
    from experiment.study import get_experiment, load_design

    with db.session() as s:
        design = load_design(s, get_experiment(s, slug))
    for _, rows in parquet.groupby("participant"):
        rebuilt = design.participant_trials(int(rows["list"].iloc[0]), int(rows["seed"].iloc[0]))
        for row in rows.to_dict("records"):
            spec = rebuilt[row["trial_index"]]
            assert (spec.left_stimulus_id, spec.right_stimulus_id, spec.kind, spec.target_side) == (
                row["left_stimulus_id"], row["right_stimulus_id"], row["kind"], row["target_side"])


def test_export_bad_input(cli, clean_database, experiment, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cases = [
        ((experiment, "--out", tmp_path / "x.xlsx"), "use a .csv or .parquet file name"),
        (("nope", "--out", tmp_path / "x.csv"), "no experiment named 'nope'"),
        ((experiment, "--out", tmp_path / "missing" / "x.csv"), "does not exist"),
    ]
    for args, message in cases:
        status, _, err = cli("export", *args, "--database-url", clean_database)
        assert status == 2
        one_line_error(err, message)
    # an experiment without answers exports an empty file with every column
    status, _, _ = cli("export", experiment, "--out", tmp_path / "empty.csv", "--database-url", clean_database)
    assert status == 0
    assert (tmp_path / "empty.csv").read_text().strip() == ",".join(COLUMNS)


def test_command_line_errors_are_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The real entry point in a fresh process: one line on stderr, exit status 2."""
    env = {"PATH": "/usr/bin:/bin", "ADVBIAS_INSTANCE_PATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "advbias", "export", "nope", "--out", str(tmp_path / "x.csv")],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    one_line_error(result.stderr, "the database has no advbias schema: run `advbias db upgrade`")
    assert not (tmp_path / "x.csv").exists()
    assert Path(tmp_path / "advbias.db").exists()  # the default database lives in the instance folder


def test_link_option_symlinks_images(cli, clean_database, stimulus_set, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from experiment import create_app

    instance = tmp_path / "linked"
    status, _, err = cli("experiment", "create", "--stimuli", stimulus_set, "--name", "linked", "--link",
                         "--instance", instance, "--database-url", clean_database)
    assert status == 0, err
    files = sorted(f for f in (instance / "stimuli").iterdir() if f.suffix == ".png")
    assert len(files) == 88 and all(f.is_symlink() for f in files)
    assert all(f.resolve().parent == (stimulus_set / "images").resolve() for f in files)
    app = create_app({"DATABASE_URL": clean_database, "INSTANCE_PATH": str(instance), "SECRET_KEY": "k"})
    try:
        from PIL import Image

        from experiment.delivery import image_url
        from experiment.models import Experiment, Participant, Trial

        client = app.test_client()
        assert client.post("/api/v1/experiments/linked/participants", json={"prolific_pid": "LINK"}).status_code == 201
        with app.extensions["advbias"].db.session() as session:
            exp = session.scalar(select(Experiment).where(Experiment.slug == "linked"))
            public_id, sid = session.execute(
                select(Participant.public_id, Trial.left_stimulus_id).join(Trial, Trial.participant_id == Participant.id)
            ).first()
            url = image_url(exp, public_id, sid)
        reply = client.get(url)
        assert reply.status_code == 200
        original = instance / "stimuli" / f"{sid}.png"
        assert Image.open(io.BytesIO(reply.data)).tobytes() == Image.open(original).convert("RGB").tobytes()
    finally:
        app.extensions["advbias"].db.dispose()


def test_sqlite_synchronous_mode_is_configurable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from experiment.settings import Settings

    settings = Settings.resolve({"DATABASE_URL": f"sqlite:///{tmp_path / 'normal.db'}"},
                                environ={"ADVBIAS_SQLITE_SYNCHRONOUS": "normal"})
    db = Database(settings.database_url, settings.sqlite_synchronous)
    try:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    finally:
        db.dispose()
    with pytest.raises(ValueError, match="ADVBIAS_SQLITE_SYNCHRONOUS: SQLite synchronous mode 'SOMETIMES'"):
        Settings.resolve(environ={"ADVBIAS_SQLITE_SYNCHRONOUS": "sometimes"})
    with pytest.raises(ValueError, match="SQLite synchronous mode 'SOMETIMES'"):
        Database(f"sqlite:///{tmp_path / 'bad.db'}", "sometimes")
