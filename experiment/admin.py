"""The admin pages: login, experiments, participants, live bias, downloads.

Protected by a password (stored as a salted hash, set with ``advbias admin
set-password``) and a signed, HTTP-only, SameSite=Strict session cookie that names
the account's session version (:mod:`experiment.accounts`): logout and a password
change revoke every copy of it. Failed logins back off per account and per address.
Every form carries a per-session CSRF token that is checked on each POST, the login
form included. The views hold no queries: they call :mod:`experiment.accounts` and
:mod:`experiment.monitor`.
"""
from __future__ import annotations

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

from experiment import accounts, errors, monitor, rehearsal
from experiment.accounts import MIN_PASSWORD_LENGTH, USERNAME, set_password  # noqa: F401  (public names)
from experiment.db import Database

bp = Blueprint("admin", __name__, url_prefix="/admin")


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
    if request.endpoint == "admin.login":
        return None
    if not session.get("admin") or not accounts.session_is_current(_db(), session["admin"], session.get("v")):
        session.clear()
        return redirect(url_for("admin.login"))
    return None


@bp.route("/login", methods=["GET", "POST"])
def login():  # type: ignore[no-untyped-def]
    if request.method == "GET":
        return render_template("admin/login.html", error=None)
    username = request.form.get("username") or USERNAME
    result = accounts.authenticate(
        _db(), current_app.config["SECRET_KEY"], username, request.form.get("password", ""),
        request.remote_addr or "", clock=current_app.config["CLOCK"],
    )
    if result.retry_after > 0:
        wait = math.ceil(result.retry_after)
        page = render_template("admin/login.html", throttled=wait,
                               error=f"too many failed logins: try again in {wait} s")
        return page, 429, {"Retry-After": str(wait)}
    if result.version is None:
        return render_template("admin/login.html", error="wrong user name or password"), 401
    session.clear()  # a fresh session (and CSRF token) after login
    session["admin"] = username
    session["v"] = result.version
    session.permanent = True
    csrf_token()
    return redirect(url_for("admin.home"))


@bp.post("/logout")
def logout():  # type: ignore[no-untyped-def]
    """End this session and every copy of it (the account's session version goes up)."""
    accounts.end_sessions(_db(), session["admin"])
    session.clear()
    return redirect(url_for("admin.login"))


@bp.get("/")
def home():  # type: ignore[no-untyped-def]
    experiments, counts = monitor.overview(_db())
    return render_template("admin/home.html", experiments=experiments, counts=counts)


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
    try:
        r = monitor.experiment_report(_db(), slug)
    except errors.NotFound:
        abort(404)
    return render_template(
        "admin/experiment.html", exp=r.exp, participants=r.participants, by_status=r.by_status,
        per_list=r.per_list, per_condition=r.per_condition, bias=r.bias, chart=_chart(r.bias), catch=r.catch,
        screening=r.screening, summary=r.exp.settings.get("design_summary", {}),
        participant_url=url_for("pages.run", slug=r.exp.slug, _external=True),
        preview_url=request.host_url.rstrip("/") + rehearsal.preview_path(r.exp),
    )


@bp.get("/experiments/<slug>/participants/<public_id>")
def participant(slug: str, public_id: str):  # type: ignore[no-untyped-def]
    try:
        d = monitor.participant_detail(_db(), slug, public_id)
    except errors.NotFound:
        abort(404)
    return render_template("admin/participant.html", exp=d.exp, p=d.participant, screening=d.screening,
                           answers=d.answers)


@bp.post("/experiments/<slug>/participants/<public_id>/void")
def void(slug: str, public_id: str):  # type: ignore[no-untyped-def]
    """Set a participant aside (a test run, a known duplicate): frees the slot, leaves the export."""
    try:
        rehearsal.void_participants(_db(), slug, [public_id], request.form.get("reason", ""))
    except errors.NotFound:
        abort(404)
    except errors.StudyError as exc:
        abort(400, description=exc.message)
    return redirect(url_for("admin.participant", slug=slug, public_id=public_id))


@bp.post("/experiments/<slug>/active")
def set_active(slug: str):  # type: ignore[no-untyped-def]
    wanted = request.form.get("active")
    if wanted not in ("0", "1"):
        abort(400, description="active must be 0 or 1")
    try:
        monitor.set_active(_db(), slug, wanted == "1")
    except errors.NotFound:
        abort(404)
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
