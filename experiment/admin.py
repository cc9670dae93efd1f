"""The admin pages: login, experiments, participants, live bias, downloads.

Protected by a password (stored as a salted hash, set with ``advbias admin
set-password``) and a signed, HTTP-only, SameSite=Strict session cookie. Every
form carries a per-session CSRF token that is checked on each POST, the login
form included.
"""
from __future__ import annotations

import functools
import hmac
import io
import math
import secrets
from datetime import datetime
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    send_file,
    session,
    url_for,
)
from sqlalchemy import case, func, select
from werkzeug.security import check_password_hash, generate_password_hash

from experiment import errors, fields, study
from experiment.db import Database
from experiment.models import Admin, Experiment, Participant, Response, Trial, utcnow

bp = Blueprint("admin", __name__, url_prefix="/admin")
MIN_PASSWORD_LENGTH = 10
USERNAME = "admin"


def set_password(db: Database, password: str, username: str = USERNAME) -> None:
    """Create or update an admin account; only the hash is stored."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if not fields.SLUG_RE.match(username):
        raise ValueError("the user name must be lowercase letters, digits or '-'")
    hashed = generate_password_hash(password)
    with db.write() as s:
        admin = s.scalar(select(Admin).where(Admin.username == username))
        if admin is None:
            s.add(Admin(username=username, password_hash=hashed, updated_at=utcnow()))
        else:
            admin.password_hash = hashed
            admin.updated_at = utcnow()


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return generate_password_hash(secrets.token_hex(16))


def _db() -> Database:
    return current_app.extensions["advbias"].db


def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


@bp.app_context_processor
def _inject_csrf() -> dict[str, Any]:
    return {"csrf_token": csrf_token}


@bp.before_request
def _guard():  # type: ignore[no-untyped-def]
    if request.method == "POST":
        sent = request.form.get("csrf_token", "")
        expected = session.get("csrf", "")
        if not sent or not expected or not hmac.compare_digest(sent, expected):
            abort(400, description="the form's CSRF token is missing or wrong: reload the page and try again")
    if request.endpoint != "admin.login" and not session.get("admin"):
        return redirect(url_for("admin.login"))
    return None


@bp.route("/login", methods=["GET", "POST"])
def login():  # type: ignore[no-untyped-def]
    error = None
    if request.method == "POST":
        username = request.form.get("username") or USERNAME
        password = request.form.get("password", "")
        admin = None
        if fields.SLUG_RE.match(username):
            with _db().session() as s:
                admin = s.scalar(select(Admin).where(Admin.username == username))
        # Check a hash even for unknown users so the answer time does not reveal which names exist.
        stored = admin.password_hash if admin else _dummy_hash()
        if check_password_hash(stored, password) and admin is not None:
            session.clear()  # a fresh session (and CSRF token) after login
            session["admin"] = username
            session.permanent = True
            csrf_token()
            return redirect(url_for("admin.home"))
        error = "wrong user name or password"
    return render_template("admin/login.html", error=error), (401 if error else 200)


@bp.post("/logout")
def logout():  # type: ignore[no-untyped-def]
    session.clear()
    return redirect(url_for("admin.login"))


@bp.get("/")
def home():  # type: ignore[no-untyped-def]
    with _db().session() as s:
        experiments = s.scalars(select(Experiment).order_by(Experiment.created_at)).all()
        counts: dict[int, dict[str, int]] = {}
        for exp_id, status, n in s.execute(
            select(Participant.experiment_id, Participant.status, func.count()).group_by(
                Participant.experiment_id, Participant.status
            )
        ):
            counts.setdefault(exp_id, {})[status] = n
    return render_template("admin/home.html", experiments=experiments, counts=counts)


def _bias_rows(s, exp: Experiment) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Proportion of main-trial choices of the image perturbed toward the asked category, per condition and budget."""
    chose = case((Response.response == Trial.target_side, 1), else_=0)
    rows = s.execute(
        select(Trial.condition, Trial.eps, func.count(), func.sum(chose))
        .join(Response, Response.trial_id == Trial.id)
        .join(Participant, Participant.id == Trial.participant_id)
        .where(Participant.experiment_id == exp.id, Trial.kind.in_(("main", "catch")))
        .group_by(Trial.condition, Trial.eps)
        .order_by(Trial.condition, Trial.eps)
    )
    out = []
    for condition, eps, n, k in rows:
        p = (k or 0) / n
        half = 1.96 * math.sqrt(max(p * (1 - p), 1e-12) / n)
        out.append({"condition": condition, "eps": eps, "n": n, "p": p, "low": max(0.0, p - half),
                    "high": min(1.0, p + half)})
    return out


def _chart(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Coordinates for the bias-per-budget SVG (no inline script or style: CSP-safe)."""
    main = [r for r in rows if r["condition"] != "catch"]
    budgets = sorted({r["eps"] for r in main})
    conditions = sorted({r["condition"] for r in main})
    width, height, left, top, plot_h = 520, 260, 50, 20, 200
    step = (width - left - 20) / max(1, len(budgets))

    def y(p: float) -> float:
        return top + (1 - p) * plot_h

    points = []
    for r in main:
        i = budgets.index(r["eps"])
        j = conditions.index(r["condition"])
        x = left + step * (i + 0.5) + (j - (len(conditions) - 1) / 2) * 12
        points.append({**r, "x": round(x, 1), "y": round(y(r["p"]), 1), "y_low": round(y(r["low"]), 1),
                       "y_high": round(y(r["high"]), 1), "series": j % 4})
    ticks = [{"x": round(left + step * (i + 0.5), 1), "label": eps} for i, eps in enumerate(budgets)]
    grid = [{"y": round(y(v), 1), "label": f"{v:.2f}"} for v in (0.0, 0.25, 0.5, 0.75, 1.0)]
    return {"width": width, "height": height, "left": left, "right": width - 20, "chance_y": round(y(0.5), 1),
            "points": points, "ticks": ticks, "grid": grid, "conditions": conditions, "axis_y": top + plot_h}


@bp.get("/experiments/<slug>")
def experiment(slug: str):  # type: ignore[no-untyped-def]
    with _db().session() as s:
        try:
            exp = study.get_experiment(s, slug)
        except errors.NotFound:
            abort(404)
        participants = s.scalars(
            select(Participant).where(Participant.experiment_id == exp.id).order_by(Participant.created_at.desc())
        ).all()
        by_status: dict[str, int] = {}
        per_list: dict[int, dict[str, int]] = {i: {} for i in range(exp.n_lists)}
        for p in participants:
            by_status[p.status] = by_status.get(p.status, 0) + 1
            per_list[p.list_index][p.status] = per_list[p.list_index].get(p.status, 0) + 1
        per_condition = s.execute(
            select(Trial.kind, Trial.condition, func.count())
            .join(Response, Response.trial_id == Trial.id)
            .join(Participant, Participant.id == Trial.participant_id)
            .where(Participant.experiment_id == exp.id)
            .group_by(Trial.kind, Trial.condition)
            .order_by(Trial.kind, Trial.condition)
        ).all()
        bias = _bias_rows(s, exp)
    return render_template(
        "admin/experiment.html", exp=exp, participants=participants, by_status=by_status, per_list=per_list,
        per_condition=per_condition, bias=bias, chart=_chart(bias), summary=exp.settings.get("design_summary", {}),
        participant_url=url_for("pages.run", slug=exp.slug, _external=True),
    )


@bp.post("/experiments/<slug>/active")
def set_active(slug: str):  # type: ignore[no-untyped-def]
    wanted = request.form.get("active")
    if wanted not in ("0", "1"):
        abort(400, description="active must be 0 or 1")
    with _db().write() as s:
        try:
            exp = study.get_experiment(s, slug)
        except errors.NotFound:
            abort(404)
        exp.active = wanted == "1"
    return redirect(url_for("admin.experiment", slug=slug))


@bp.get("/experiments/<slug>/export.<fmt>")
def download(slug: str, fmt: str):  # type: ignore[no-untyped-def]
    from experiment.export import export_bytes

    if fmt not in ("csv", "parquet"):
        abort(404)
    try:
        data = export_bytes(_db(), slug, fmt)
    except errors.NotFound:
        abort(404)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return send_file(
        io.BytesIO(data),
        mimetype="text/csv" if fmt == "csv" else "application/vnd.apache.parquet",
        as_attachment=True,
        download_name=f"{slug}-{stamp}.{fmt}",
    )
