"""deploy/backup.sh makes a restorable copy of a live database (SQLite .backup, PostgreSQL pg_dump)."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from experiment.models import Participant, Response

BACKUP = Path(__file__).resolve().parent.parent / "deploy" / "backup.sh"


def _run_backup(url: str, folder: Path, keep: int = 48) -> Path:
    env = {**os.environ, "ADVBIAS_DATABASE_URL": url, "BACKUP_DIR": str(folder), "KEEP": str(keep)}
    done = subprocess.run(["sh", str(BACKUP)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().split(": ", 1)[1])


def _counts(db) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Participant)), s.scalar(select(func.count()).select_from(Response))


def test_backup_restores_every_answer(db, experiment, participant, tmp_path, postgres_server) -> None:  # type: ignore[no-untyped-def]
    for _ in range(2):
        p = participant(experiment).prepare()
        p.answer_all()
    expected = _counts(db)
    assert expected[1] > 0
    if db.is_sqlite:
        if shutil.which("sqlite3") is None:
            pytest.fail("the sqlite3 command-line tool is needed for SQLite backups (apt install sqlite3)")
        copy = _run_backup(db.url, tmp_path / "backups")
        with sqlite3.connect(copy) as conn:
            got = (conn.execute("SELECT count(*) FROM participants").fetchone()[0],
                   conn.execute("SELECT count(*) FROM responses").fetchone()[0])
        assert got == expected
    else:
        from conftest import scratch_postgres_database
        from experiment.db import Database

        copy = _run_backup(db.url, tmp_path / "backups")
        with scratch_postgres_database(postgres_server) as restored_url:
            done = subprocess.run(["pg_restore", "--no-owner", "--dbname", restored_url.replace("+psycopg", ""),
                                   str(copy)], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            restored = Database(restored_url)
            try:
                assert _counts(restored) == expected
            finally:
                restored.dispose()
    # rotation keeps the newest KEEP copies
    time.sleep(1.1)  # copies are named by the second
    newest = _run_backup(db.url, tmp_path / "backups", keep=1)
    assert newest != copy and list((tmp_path / "backups").glob("advbias-*")) == [newest]
