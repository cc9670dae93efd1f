"""Command-line sub-commands of the experiment stage.

``advbias db upgrade``, ``advbias experiment create``, ``advbias admin
set-password``, ``advbias serve`` and ``advbias export``. Flask, SQLAlchemy and
pandas are imported inside the handlers so that ``advbias --help`` stays fast.
Every command resolves the same settings as the server (:class:`experiment.settings.Settings`:
``--instance`` and ``--database-url``, then the ``ADVBIAS_*`` variables, then defaults) once,
and hands them down; nothing is written to the environment.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from advbias.errors import CLIError
from advbias.setdir import IMAGES_DIR, MANIFEST_NAME

if TYPE_CHECKING:
    from experiment.settings import Settings


class CommandError(CLIError):
    """A problem the user can fix; the ``advbias`` root prints it as one line and exits with status 2."""


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--instance", metavar="DIR", help="instance folder (default: $ADVBIAS_INSTANCE_PATH or ./instance)")
    parser.add_argument(
        "--database-url", metavar="URL",
        help="database (default: $ADVBIAS_DATABASE_URL or SQLite in the instance folder)",
    )


def register(subparsers: Any) -> None:
    db = subparsers.add_parser("db", help="database schema (Alembic migrations)")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION")
    db_sub.required = True
    up = db_sub.add_parser("upgrade", help="create or upgrade the database schema to the newest version")
    _common(up)
    up.set_defaults(handler=cmd_db_upgrade)

    exp = subparsers.add_parser("experiment", help="create and list experiments")
    exp_sub = exp.add_subparsers(dest="experiment_command", metavar="ACTION")
    exp_sub.required = True
    create = exp_sub.add_parser("create", help="import a stimulus set and a design as a new experiment")
    create.add_argument("--stimuli", required=True, metavar="SETDIR", help=f"stimulus set folder ({MANIFEST_NAME}, {IMAGES_DIR}/)")
    create.add_argument("--name", required=True, metavar="SLUG", help="experiment name used in URLs (lowercase, digits, -)")
    create.add_argument("--config", metavar="FILE", help="experiment TOML (design, codes, texts); default: all defaults")
    create.add_argument("--analysis", metavar="FILE",
                        help="analysis.toml: the analysis plan, stored (text, sha256, time) before the first answer")
    create.add_argument("--link", action="store_true", help="symlink the images instead of copying them")
    create.add_argument("--base-url", metavar="URL",
                        help="public address of the server, for the printed URLs (default: $ADVBIAS_PUBLIC_URL)")
    _common(create)
    create.set_defaults(handler=cmd_experiment_create)
    listing = exp_sub.add_parser("list", help="list experiments with participant counts")
    _common(listing)
    listing.set_defaults(handler=cmd_experiment_list)
    _register_rehearsal(subparsers, exp_sub)

    admin = subparsers.add_parser("admin", help="admin accounts")
    admin_sub = admin.add_subparsers(dest="admin_command", metavar="ACTION")
    admin_sub.required = True
    pw = admin_sub.add_parser("set-password", help="set the admin password (stored hashed)")
    pw.add_argument("--user", default="admin", help="user name (default: admin)")
    how = pw.add_mutually_exclusive_group()
    how.add_argument("--generate", action="store_true", help="generate a random password and print it")
    how.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    _common(pw)
    pw.set_defaults(handler=cmd_admin_set_password)

    serve = subparsers.add_parser("serve", help="serve the experiment (development server, or gunicorn with --workers)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    serve.add_argument("--workers", type=int, metavar="N", help="run gunicorn with N worker processes")
    serve.add_argument("--threads", type=int, default=4, metavar="T", help="threads per gunicorn worker (default: 4)")
    _common(serve)
    serve.set_defaults(handler=cmd_serve)

    export = subparsers.add_parser("export", help="write one row per answered trial to CSV or Parquet")
    export.add_argument("slug", metavar="SLUG", help="experiment name")
    export.add_argument("--out", required=True, metavar="FILE",
                        help="FILE.csv or FILE.parquet (with its sidecar FILE.json); with --format psychds a folder")
    export.add_argument("--format", choices=("file", "psychds"), default="file",
                        help="file: CSV or Parquet by the name (default); psychds: a Psych-DS dataset folder")
    export.add_argument("--include-void", action="store_true", help="keep voided participants (status void)")
    _common(export)
    export.set_defaults(handler=cmd_export)


def _settings(args: argparse.Namespace, defaults: Mapping[str, Any] | None = None) -> "Settings":
    """The settings of this command: its options, then the ``ADVBIAS_*`` variables, then ``defaults``."""
    from experiment.settings import Settings

    instance = getattr(args, "instance", None)
    return Settings.resolve(
        {"INSTANCE_PATH": str(Path(instance).resolve()) if instance else None,
         "DATABASE_URL": getattr(args, "database_url", None) or None},
        defaults=defaults,
    )


def _database(args: argparse.Namespace, *, check: bool = True, settings: "Settings | None" = None):  # type: ignore[no-untyped-def]
    from experiment.db import Database, SchemaError, check_schema

    settings = settings or _settings(args)
    try:
        db = Database(settings.database_url, settings.sqlite_synchronous)
    except ImportError as exc:
        raise CommandError(f"cannot open the database: {exc}") from None
    if check:
        try:
            check_schema(db.engine)
        except SchemaError as exc:
            db.dispose()
            raise CommandError(str(exc)) from None
    return db, settings


def _describe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import OperationalError

    from experiment.db import upgrade

    db, settings = _database(args, check=False)
    try:
        before, after = upgrade(db.engine)
    except OperationalError as exc:
        raise CommandError(f"cannot reach the database: {str(exc.orig).strip().splitlines()[0]}") from None
    finally:
        db.dispose()
    where = _describe_url(settings.database_url)
    if before == after:
        print(f"database {where} is up to date (revision {after})")
    else:
        print(f"database {where} upgraded from {before or 'empty'} to revision {after}")
    return 0


def participant_urls(base: str, slug: str) -> tuple[str, str]:
    """The plain participant URL and the one to paste into Prolific's study settings."""
    base = base.rstrip("/")
    url = f"{base}/run/{slug}"
    params = "&".join(f"{name}={{{{%{name}%}}}}" for name in ("PROLIFIC_PID", "STUDY_ID", "SESSION_ID"))
    return url, f"{url}?{params}"


def _analysis_plan(path: str | None) -> dict[str, str] | None:
    """The analysis plan to store: the file's exact text (it must at least be TOML)."""
    import tomllib

    from experiment.study import analysis_plan

    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CommandError(f"analysis plan not found: {path}") from None
    except UnicodeDecodeError:
        raise CommandError(f"{path} is not UTF-8 text") from None
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CommandError(f"{path} is not valid TOML: {exc}") from None
    return analysis_plan(text)


def cmd_experiment_create(args: argparse.Namespace) -> int:
    from experiment.study import create_experiment
    from experiment.config import load_config_file

    raw = load_config_file(Path(args.config) if args.config else None)
    plan = _analysis_plan(args.analysis)
    db, settings = _database(args)
    try:
        exp, design, created = create_experiment(
            db, args.name, Path(args.stimuli), raw, settings.stimulus_store, link=args.link, plan=plan
        )
    finally:
        db.dispose()
    s = design.summary()
    verb = "created" if created else "already exists (same stimulus set and configuration, nothing changed):"
    print(f"experiment {exp.slug} {verb}")
    print(
        f"  design: {s['main_trials']} main + {s['practice_trials']} practice + {s['catch_trials']} catch trials "
        f"per participant; {s['lists']} counterbalancing lists; pairs {', '.join(s['pairs'])}; budgets "
        f"{', '.join(map(str, s['budgets']))}; trial types {', '.join(s['conditions'])}"
        + (f"; model sets {', '.join(s['model_sets'])}" if any(s["model_sets"]) else "")
    )
    if s["excluded_sources"]:
        print(f"  note: {s['excluded_sources']} source image(s) lack some version the design needs and are not used")
    if s.get("lists_reusing_images"):
        print(f"  note: in {s['lists_reusing_images']} list(s) a catch or practice trial shows an image that a main "
              "trial shows too (the set has too few to spare); such an image marks a clean photo")
    stored = exp.settings.get("analysis_plan")
    if stored:
        print(f"  analysis plan stored at {stored['stored_at']} (sha256 {stored['sha256'][:16]}...)")
    print(f"  completion code: {exp.settings['completion_code']}")
    who = "PROLIFIC_PID required" if exp.settings.get("require_prolific_pid") else "anonymous starts allowed"
    print(f"  participants: {who}; an unfinished participant frees their list slot after "
          f"{exp.settings.get('timeout_minutes', 90)} min")
    base = args.base_url or settings.public_url
    url, prolific = participant_urls(base, exp.slug)
    print(f"  participant URL: {url}")
    print(f"  Prolific study URL: {prolific}")
    return 0


def cmd_experiment_list(args: argparse.Namespace) -> int:
    from experiment.monitor import participant_counts

    db, _ = _database(args)
    try:
        experiments, counts = participant_counts(db)
    finally:
        db.dispose()
    if not experiments:
        print("no experiments yet: advbias experiment create --stimuli SETDIR --name SLUG")
    for exp in experiments:
        state = "open" if exp.active else "closed"
        print(f"{exp.slug}\t{state}\t{counts.get(exp.id, 0)} participants\tset {exp.set_hash[:12]}")
    return 0


def cmd_admin_set_password(args: argparse.Namespace) -> int:
    import getpass
    import secrets

    from experiment.accounts import set_password

    if args.generate:
        password = secrets.token_urlsafe(12)
    elif args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("new admin password: ")
        if getpass.getpass("again: ") != password:
            raise CommandError("the two passwords differ")
    else:
        raise CommandError("no terminal to ask for the password: use --password-stdin or --generate")
    db, _ = _database(args)
    try:
        set_password(db, password, args.user)
    finally:
        db.dispose()
    if args.generate:
        print(f"admin password for {args.user}: {password}")
    else:
        print(f"admin password for {args.user} set")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:

    if not 1 <= args.port <= 65535:
        raise CommandError(f"port {args.port} is outside 1..65535")
    if args.workers is not None and not 1 <= args.workers <= 256:
        raise CommandError("--workers must be between 1 and 256")
    if not 1 <= args.threads <= 256:
        raise CommandError("--threads must be between 1 and 256")
    # plain HTTP on this machine: the admin cookie must still work (unless ADVBIAS_SECURE_COOKIES says otherwise)
    settings = _settings(args, defaults={"SECURE_COOKIES": "0"} if args.host in LOOPBACK else None)
    db, _ = _database(args, settings=settings)  # fail fast, with one line, on a missing or old schema
    db.dispose()
    if args.workers is None:
        from experiment import create_app

        app = create_app(settings=settings)
        print(f"advbias development server on http://{args.host}:{args.port}/ (use --workers N in production)")
        app.run(host=args.host, port=args.port, threaded=True, use_reloader=False)
        return 0
    _gunicorn(args, settings)
    return 0


#: gthread that reads whole requests before giving them a thread, with JSON refusals (docs/reliability.md).
WORKER_CLASS = "experiment.gunicorn_worker.JsonErrorThreadWorker"


def _gunicorn(args: argparse.Namespace, settings: "Settings") -> None:
    """Run gunicorn; every worker builds its app from ``settings``, resolved here in the master before it forks."""
    from gunicorn.app.base import BaseApplication

    host = f"[{args.host}]" if ":" in args.host else args.host
    options = {
        "bind": f"{host}:{args.port}",
        "workers": args.workers,
        "worker_class": WORKER_CLASS,
        "threads": args.threads,
        "timeout": 60,
        "graceful_timeout": 20,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "preload_app": False,  # each worker opens its own database connections
        # No runtime control socket (gunicorn >= 23 puts one in $HOME, shared by every server started there).
        "control_socket_disable": True,
    }

    class Server(BaseApplication):  # type: ignore[misc]
        def __init__(self, settings: "Settings") -> None:
            self.settings = settings  # the workers inherit this object; they never read the environment
            super().__init__()

        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings:  # settings that an older gunicorn lacks are skipped
                    self.cfg.set(key, value)

        def load(self):  # type: ignore[no-untyped-def]
            from experiment import create_app

            return create_app(settings=self.settings)

    print(f"advbias on http://{options['bind']}/ with gunicorn, {args.workers} worker(s) x {args.threads} thread(s)")
    sys.stdout.flush()
    Server(settings).run()


def cmd_export(args: argparse.Namespace) -> int:
    from experiment.export import export_format, write_export, write_psychds
    from experiment.errors import NotFound

    out = Path(args.out)
    if args.format == "file":
        export_format(out)  # a bad file name fails before touching the database
    elif out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} exists and is not a folder (a Psych-DS dataset is a folder)")
    db, _ = _database(args)
    try:
        if args.format == "psychds":
            data = write_psychds(db, args.slug, out, include_void=args.include_void)
            print(f"wrote the Psych-DS dataset of {args.slug} to {out} ({data.relative_to(out)})")
            return 0
        n = write_export(db, args.slug, out, include_void=args.include_void)
    except NotFound as exc:
        raise CommandError(exc.message) from None
    finally:
        db.dispose()
    print(f"wrote {n} answered trial(s) of {args.slug} to {out} (and {out.with_suffix('.json').name})")
    return 0


def _register_rehearsal(subparsers: Any, exp_sub: Any) -> None:
    """``experiment preview`` and ``participants void`` (experiment/rehearsal.py)."""
    preview = exp_sub.add_parser("preview", help="print the preview link: a rehearsal without a list slot or export")
    preview.add_argument("slug", metavar="SLUG", help="experiment name")
    preview.add_argument("--base-url", metavar="URL", help="public address of the server (default: $ADVBIAS_PUBLIC_URL)")
    _common(preview)
    preview.set_defaults(handler=cmd_experiment_preview)
    people = subparsers.add_parser("participants", help="set participants aside")
    people_sub = people.add_subparsers(dest="participants_command", metavar="ACTION")
    people_sub.required = True
    void = people_sub.add_parser("void", help="void participants: free their list slot, leave them out of the export")
    void.add_argument("slug", metavar="SLUG", help="experiment name")
    void.add_argument("ids", nargs="+", metavar="ID", help="participant (export id) or PROLIFIC_PID")
    void.add_argument("--reason", required=True, metavar="TEXT", help="why (kept with the record)")
    _common(void)
    void.set_defaults(handler=cmd_participants_void)


def cmd_experiment_preview(args: argparse.Namespace) -> int:
    from experiment.errors import NotFound
    from experiment.rehearsal import preview_path
    from experiment.study import find_experiment

    db, settings = _database(args)
    try:
        exp = find_experiment(db, args.slug)
    except NotFound as exc:
        raise CommandError(exc.message) from None
    finally:
        db.dispose()
    base = (args.base_url or settings.public_url).rstrip("/")
    print(f"{base}{preview_path(exp)}")
    return 0


def cmd_participants_void(args: argparse.Namespace) -> int:
    from experiment.errors import StudyError
    from experiment.rehearsal import void_participants

    db, _ = _database(args)
    try:
        done = void_participants(db, args.slug, args.ids, args.reason)
    except StudyError as exc:
        raise CommandError(exc.message) from None
    finally:
        db.dispose()
    print(f"voided {len(done)} participant(s) of {args.slug}: {', '.join(done)} (their list slots are free)")
    return 0
