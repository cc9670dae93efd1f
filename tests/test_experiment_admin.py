"""Admin pages: login, CSRF, secure cookie, counts, live bias and downloads (SQLite and PostgreSQL)."""
from __future__ import annotations

import io
import re

import pandas as pd
import pytest
from sqlalchemy import select

from experiment.accounts import set_password
from experiment.export import COLUMNS
from experiment.models import Admin, Experiment

PASSWORD = "correct horse battery"


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "form without a CSRF token"
    return match.group(1)


def login(client, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    token = csrf_from(client.get("/admin/login").get_data(as_text=True))
    return client.post("/admin/login", data={"username": "admin", "password": password, "csrf_token": token})


@pytest.fixture
def admin_client(client, db):  # type: ignore[no-untyped-def]
    set_password(db, PASSWORD)
    assert login(client).status_code == 302
    return client


def test_password_is_stored_hashed_and_checked(client, db) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="at least 10 characters"):
        set_password(db, "short")
    set_password(db, PASSWORD)
    with db.session() as s:
        stored = s.scalar(select(Admin.password_hash))
    assert PASSWORD not in stored and stored.startswith(("scrypt:", "pbkdf2:"))
    assert client.get("/admin/").status_code == 302  # not logged in: to the login page
    assert client.get("/admin/").headers["Location"].endswith("/admin/login")
    token = csrf_from(client.get("/admin/login").get_data(as_text=True))
    for username in ("a\x00b", "nobody", "x" * 500):
        strange = client.post("/admin/login", data={"username": username, "password": PASSWORD, "csrf_token": token})
        assert strange.status_code == 401
    wrong = login(client, "not the password")
    assert wrong.status_code == 401 and "wrong user name or password" in wrong.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302
    ok = login(client)
    assert ok.status_code == 302
    cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" in cookie
    assert client.get("/admin/").status_code == 200
    # a new password replaces the old one and ends the session that was logged in
    set_password(db, PASSWORD + " 2")
    assert client.get("/admin/").status_code == 302
    assert login(client).status_code == 401 and login(client, PASSWORD + " 2").status_code == 302


def test_forms_need_the_csrf_token(client, db, experiment) -> None:  # type: ignore[no-untyped-def]
    set_password(db, PASSWORD)
    client.get("/admin/login")
    no_token = client.post("/admin/login", data={"username": "admin", "password": PASSWORD})
    assert no_token.status_code == 400 and "CSRF" in no_token.get_data(as_text=True)
    forged = client.post("/admin/login", data={"username": "admin", "password": PASSWORD, "csrf_token": "forged"})
    assert forged.status_code == 400
    assert client.get("/admin/").status_code == 302  # still logged out
    assert login(client).status_code == 302
    page = client.get(f"/admin/experiments/{experiment}").get_data(as_text=True)
    token = csrf_from(page)
    # closing the study without the token: refused, nothing changes
    refused = client.post(f"/admin/experiments/{experiment}/active", data={"active": "0"})
    assert refused.status_code == 400
    with db.session() as s:
        assert s.scalar(select(Experiment.active)) is True
    done = client.post(f"/admin/experiments/{experiment}/active", data={"active": "0", "csrf_token": token})
    assert done.status_code == 302
    with db.session() as s:
        assert s.scalar(select(Experiment.active)) is False
    assert client.post(f"/admin/experiments/{experiment}/active", data={"active": "x", "csrf_token": token}).status_code == 400
    # logging out needs the token too, and ends the session
    assert client.post("/admin/logout").status_code == 400
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/admin/").status_code == 302


def test_experiment_page_counts_and_live_bias(admin_client, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    done = participant(experiment, prolific_pid="one").prepare()
    done.answer_all(lambda t: "left")
    done.finish()
    half = participant(experiment, prolific_pid="two").prepare()
    for t in half.trials()[:4]:
        half.answer(t, "right")
    home = admin_client.get("/admin/").get_data(as_text=True)
    assert experiment in home
    page = admin_client.get(f"/admin/experiments/{experiment}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'data-testid="chance-line"' in html and 'data-testid="bias-table"' in html
    assert "one" in html and "two" in html and "in_progress: <strong>1</strong>" in html
    lists = re.search(r'data-testid="list-table".*?</table>', html, re.S).group(0)
    rows = re.findall(r"<tr><td>(\d+)</td>" + r"<td>(\d+)</td>" * 5 + "</tr>", lists)
    assert [r[0] for r in rows] == [str(i) for i in range(8)]  # 2 sides x 4 rotations
    assert sum(int(r[1]) + int(r[2]) + int(r[3]) for r in rows) == 2
    bias = re.search(r'data-testid="bias-table".*?</table>', html, re.S).group(0)
    assert "targets" in bias and "<td>2</td>" in bias and "<td>16</td>" in bias
    assert "catch" not in bias  # attention is shown apart from the bias
    assert re.search(r'data-testid="catch-accuracy">\d+ of \d+ catch trials answered correctly', html)
    assert admin_client.get("/admin/experiments/nope").status_code == 404


def test_downloads(admin_client, experiment, participant) -> None:  # type: ignore[no-untyped-def]
    p = participant(experiment, prolific_pid="dl").prepare()
    p.answer_all(lambda t: "right")
    csv = admin_client.get(f"/admin/experiments/{experiment}/export.csv")
    assert csv.status_code == 200 and csv.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in csv.headers["Content-Disposition"]
    frame = pd.read_csv(io.BytesIO(csv.data), keep_default_na=False)
    assert list(frame.columns) == list(COLUMNS) and len(frame) == 12
    parquet = admin_client.get(f"/admin/experiments/{experiment}/export.parquet")
    assert parquet.status_code == 200
    table = pd.read_parquet(io.BytesIO(parquet.data))
    assert list(table.columns) == list(COLUMNS) and len(table) == 12
    assert (table["response"] == "right").all()
    assert admin_client.get(f"/admin/experiments/{experiment}/export.xlsx").status_code == 404
    # downloads need a login
    admin_client.post("/admin/logout", data={"csrf_token": csrf_from(admin_client.get("/admin/").get_data(as_text=True))})
    assert admin_client.get(f"/admin/experiments/{experiment}/export.csv").status_code == 302
