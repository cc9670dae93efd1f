"""The advbias web experiment: a Flask app for two-image forced-choice trials.

``create_app()`` builds the app from ``ADVBIAS_*`` environment variables (or a
mapping passed in, which wins), checks that the database schema is at the
newest migration (and refuses to start otherwise), and registers the
participant pages, the ``/api/v1/`` JSON API and the admin pages.

Configuration (environment variable / key in ``config``):

========================  =====================  ==============================================
``ADVBIAS_INSTANCE_PATH``  ``INSTANCE_PATH``      folder for the database, images, secret key;
                                                 default ``./instance``
``ADVBIAS_DATABASE_URL``   ``DATABASE_URL``       default ``sqlite:///INSTANCE/advbias.db``;
                                                 ``postgresql://user@host/db`` for PostgreSQL
``ADVBIAS_SECRET_KEY``     ``SECRET_KEY``         signs admin sessions; default: a random key
                                                 kept in ``INSTANCE/secret_key``
``ADVBIAS_SECURE_COOKIES`` ``SECURE_COOKIES``     ``1`` (default): the admin cookie is sent over
                                                 HTTPS only; ``0`` for plain-HTTP local use
``ADVBIAS_SQLITE_SYNCHRONOUS``                    ``FULL`` (default) or ``NORMAL``: see
                                                 :func:`experiment.db.sqlite_synchronous`
``ADVBIAS_CONCURRENT_STARTS``                     starts one process runs at once (default 1):
                                                 see :mod:`experiment.admission`
``ADVBIAS_START_LIMIT``    ``START_LIMIT``        new participants per client address:
                                                 ``N/SECONDS`` (default ``30/600``); ``0``: none
``ADVBIAS_TRUSTED_PROXIES`` ``TRUSTED_PROXIES``   reverse proxies in front of the app whose
                                                 ``X-Forwarded-For/-Proto/-Host`` are believed
                                                 (default ``0``: none; ``1`` behind one Caddy)
========================  =====================  ==============================================
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Mapping

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Flask and SQLAlchemy load lazily: the CLI imports this package for every command
    from flask import Flask

    from experiment.db import Database

MAX_BODY_BYTES = 64 * 1024

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "font-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)


def resource_dir(name: str) -> Path:
    """The folder of the data package ``experiment.<name>`` (``templates`` or ``static``).

    In the repository these are the top-level ``templates/`` and ``static/`` folders; the
    build maps them into the package (pyproject.toml), so a wheel installed anywhere finds
    them through :mod:`importlib.resources` and never through a path to a checkout.
    """
    from importlib.resources import files

    folder = files(f"{__name__}.{name}")
    path = Path(str(folder))
    if not (path / ("run.html" if name == "templates" else "run.js")).is_file():
        raise RuntimeError(f"advbias is installed without its {name}: reinstall it (pip install advbias)")
    return path


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def settings_from_env(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Resolve the app's settings: explicit overrides, then ADVBIAS_* variables, then defaults."""
    overrides = dict(overrides or {})
    env = os.environ

    def pick(key: str, default: Any = None) -> Any:
        if key in overrides and overrides[key] is not None:
            return overrides[key]
        return env.get(f"ADVBIAS_{key}", default)

    instance = Path(pick("INSTANCE_PATH", "instance")).expanduser().resolve()
    database_url = pick("DATABASE_URL") or f"sqlite:///{instance / 'advbias.db'}"
    return {
        "INSTANCE_PATH": instance,
        "DATABASE_URL": database_url,
        "SECRET_KEY": pick("SECRET_KEY"),
        "SECURE_COOKIES": _truthy(pick("SECURE_COOKIES", "1")),
        "START_LIMIT": str(pick("START_LIMIT", DEFAULT_START_LIMIT)),
        "TRUSTED_PROXIES": _proxies(pick("TRUSTED_PROXIES", "0")),
        "STIMULUS_STORE": instance / "stimuli",
    }


#: New participants per client address: enough for a lab or a household behind one address,
#: far too few to fill a study's lists with invented PROLIFIC_PIDs.
DEFAULT_START_LIMIT = "30/600"


def _proxies(value: Any) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"TRUSTED_PROXIES must be a whole number of proxies, not {value!r}") from None
    if not 0 <= n <= 10:
        raise ValueError("TRUSTED_PROXIES must be between 0 and 10")
    return n


def stimulus_store(settings: Mapping[str, Any]) -> Path:
    return Path(settings["STIMULUS_STORE"])


def _secret_key(instance: Path) -> str:
    """A per-installation key kept in the instance folder; safe when several workers start at once."""
    path = instance / "secret_key"
    instance.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another worker may be writing it right now
            key = path.read_text().strip()
            if key:
                return key
            import time

            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty: delete it and restart")
    key = secrets.token_hex(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


class AdvbiasState:
    """What the app keeps in ``app.extensions['advbias']``."""

    def __init__(self, db: "Database", store: Path) -> None:
        from experiment.admission import gate_from_env

        self.db = db
        self.store = store
        self.start_gate = gate_from_env()  # experiment/admission.py: bursts of starts never starve answers


def create_app(config: Mapping[str, Any] | None = None) -> "Flask":
    """Build the app; raises :class:`experiment.db.SchemaError` if the database is not upgraded."""
    from flask import Flask

    from experiment.db import Database, check_schema
    from experiment.models import utcnow

    settings = settings_from_env(config)
    from experiment.participants import parse_start_limit

    parse_start_limit(settings["START_LIMIT"])  # a bad setting stops the server at start, not at a participant
    app = Flask(
        __name__,
        instance_path=str(settings["INSTANCE_PATH"]),
        template_folder=str(resource_dir("templates")),
        static_folder=str(resource_dir("static")),
        static_url_path="/static",
    )
    db = Database(settings["DATABASE_URL"])
    try:
        check_schema(db.engine)
    except Exception:
        db.dispose()
        raise
    app.config.update(
        SECRET_KEY=settings["SECRET_KEY"] or _secret_key(settings["INSTANCE_PATH"]),
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        SESSION_COOKIE_NAME="advbias_admin",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=settings["SECURE_COOKIES"],
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=8 * 3600,
        JSON_SORT_KEYS=False,
        ADVBIAS=settings,
        CLOCK=utcnow,  # a callable for the current UTC time (login back-off, start-limit windows)
    )
    if config:
        for key in ("TESTING", "CLOCK"):  # tests pass a clock they can move
            if key in config:
                app.config[key] = config[key]
    app.extensions["advbias"] = AdvbiasState(db, stimulus_store(settings))

    from experiment import admin, api, pages

    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(admin.bp)
    _install_headers(app)
    _install_errors(app)
    from experiment.admission import AdmissionMiddleware, BodyMiddleware

    # Starts pass a gate in front of Flask (experiment/admission.py): bursts of newcomers never starve answers.
    app.wsgi_app = AdmissionMiddleware(app.wsgi_app, app.extensions["advbias"])  # type: ignore[method-assign]
    # Outside the gate: every body is read whole (or refused, 413) before a start slot is taken.
    app.wsgi_app = BodyMiddleware(app.wsgi_app, MAX_BODY_BYTES)  # type: ignore[method-assign]
    if settings["TRUSTED_PROXIES"]:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = settings["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    return app


def _install_headers(app: "Flask") -> None:
    from flask import request

    @app.after_request
    def security_headers(response):  # type: ignore[no-untyped-def]
        h = response.headers
        h.setdefault("Content-Security-Policy", CSP)
        h["X-Content-Type-Options"] = "nosniff"
        h["X-Frame-Options"] = "DENY"
        h["Referrer-Policy"] = "no-referrer"
        h["Cross-Origin-Opener-Policy"] = "same-origin"
        h["Cross-Origin-Resource-Policy"] = "same-origin"
        h["Permissions-Policy"] = "camera=(), microphone=(), geolocation=(), payment=()"
        if request.is_secure:
            h["Strict-Transport-Security"] = "max-age=31536000"
        if not (request.path.startswith("/static/") or request.path.startswith("/stimuli/")):
            h["Cache-Control"] = "no-store"
        return response


def wants_json() -> bool:
    from flask import request

    return request.path.startswith("/api/")


def _install_errors(app: "Flask") -> None:
    from flask import jsonify, render_template, request
    from werkzeug.exceptions import HTTPException

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        message = {
            404: "not found",
            405: "method not allowed",
            413: f"request body too large (limit {MAX_BODY_BYTES} bytes)",
        }.get(exc.code or 500, (exc.description or exc.name or "error").strip())
        if wants_json():
            return jsonify(error=message), exc.code
        return render_template("error.html", code=exc.code, message=message), exc.code

    @app.errorhandler(Exception)
    def server_error(exc: Exception):  # type: ignore[no-untyped-def]
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        if wants_json():
            return jsonify(error="internal server error"), 500
        return render_template("error.html", code=500, message="internal server error"), 500
