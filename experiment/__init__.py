"""The advbias web experiment: a Flask app for two-image forced-choice trials.

``create_app(settings=...)`` builds the app from a resolved
:class:`experiment.settings.Settings` (or resolves one from a mapping of setting keys,
then the ``ADVBIAS_*`` environment variables, then defaults: the table of settings is in
:mod:`experiment.settings`), checks that the database schema is at the newest migration
(and refuses to start otherwise), and registers the participant pages, the ``/api/v1/``
JSON API and the admin pages.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from experiment.settings import Settings

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

    def __init__(self, db: "Database", settings: Settings) -> None:
        from experiment.admission import StartGate

        self.db = db
        self.settings = settings
        self.store = settings.stimulus_store
        # experiment/admission.py: bursts of starts never starve answers
        self.start_gate = StartGate(concurrent=settings.concurrent_starts)


#: Keys of ``config`` that go to Flask's own configuration, not to the settings (tests pass a clock they can move).
APP_KEYS = ("TESTING", "CLOCK")


def create_app(config: Mapping[str, Any] | None = None, *, settings: Settings | None = None) -> "Flask":
    """Build the app; raises :class:`experiment.db.SchemaError` if the database is not upgraded.

    ``settings`` is the resolved :class:`~experiment.settings.Settings`; without it, the keys of
    ``config`` other than :data:`APP_KEYS` are resolved into one (:meth:`Settings.resolve`).
    """
    from flask import Flask

    from experiment.db import Database, check_schema
    from experiment.models import utcnow

    config = dict(config or {})
    app_config = {key: config.pop(key) for key in APP_KEYS if key in config}
    if settings is None:
        settings = Settings.resolve(config)  # a bad setting stops the server at start, not at a participant
    elif config:
        raise TypeError(f"create_app: give settings or setting keys, not both ({', '.join(sorted(config))})")
    app = Flask(
        __name__,
        instance_path=str(settings.instance_path),
        template_folder=str(resource_dir("templates")),
        static_folder=str(resource_dir("static")),
        static_url_path="/static",
    )
    db = Database(settings.database_url, settings.sqlite_synchronous)
    try:
        check_schema(db.engine)
    except Exception:
        db.dispose()
        raise
    app.config.update(
        SECRET_KEY=settings.secret_key or _secret_key(settings.instance_path),
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        SESSION_COOKIE_NAME="advbias_admin",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=8 * 3600,
        JSON_SORT_KEYS=False,
        ADVBIAS=settings,
        CLOCK=utcnow,  # a callable for the current UTC time (login back-off, start-limit windows)
    )
    app.config.update(app_config)
    app.extensions["advbias"] = AdvbiasState(db, settings)

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
    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = settings.trusted_proxies
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
