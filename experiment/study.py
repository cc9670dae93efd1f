"""Experiments and participants: importing a stimulus set, assigning lists, storing answers.

Everything that changes the database on behalf of a participant lives here, used
by the JSON API and by the tests alike. Every write is one short transaction
whose correctness under concurrency rests on database constraints and
compare-and-set updates, never on a check made earlier in Python:

* list assignment locks the experiment row (PostgreSQL ``FOR UPDATE``; SQLite's
  ``BEGIN IMMEDIATE`` serialises writers anyway), so two participants arriving
  together cannot both see the same least-filled list;
* a second record for one PROLIFIC_PID is impossible (unique constraint); the
  loser of a race resumes the winner's record;
* a response is stored only if ``participants.next_index`` still equals the
  trial's index (``UPDATE ... WHERE next_index = :i``), and a trial or an
  idempotency key can be stored once only (unique constraints). A replay with
  the same key returns the stored answer and writes nothing.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import secrets
import string
import threading
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from sqlalchemy import and_, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from experiment.db import Database
from experiment.design import CONDITIONS, DEFAULT_QUESTION, Design, DesignConfig, StimulusRow
from experiment.models import Experiment, Participant, Response, Stimulus, Trial, utcnow

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
CODE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
KEY_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
MANIFEST_COLUMNS = (
    "stimulus_id", "file", "source", "source_sha256", "condition", "pair", "target", "eps", "pair_key",
    "ensemble_category", "ensemble_category_prob",
)
MANIFEST_CONDITIONS = ("clean", "adversarial", "flip", "noise")
DEFAULT_REDIRECT = "https://app.prolific.com/submissions/complete?cc={code}"


# =========================================================================== errors

class StudyError(Exception):
    """A request that cannot be honoured; ``status`` is the HTTP status the API answers with."""

    status = 400

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class NotFound(StudyError):
    status = 404


class Forbidden(StudyError):
    status = 403


class Conflict(StudyError):
    status = 409


# =========================================================================== stimulus sets

def read_manifest(setdir: Path) -> list[StimulusRow]:
    """Parse and validate ``SETDIR/manifest.csv`` (docs/manifest.md); ValueError names the bad row."""
    path = setdir / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{setdir} is not a stimulus set: {path.name} is missing")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}")
        rows: list[StimulusRow] = []
        seen: set[str] = set()
        for line, rec in enumerate(reader, start=2):
            where = f"{path.name} line {line}"
            sid = (rec["stimulus_id"] or "").strip()
            if not HEX64_RE.match(sid):
                raise ValueError(f"{where}: stimulus_id {sid!r} is not a 64-digit lowercase hex sha256")
            if sid in seen:
                raise ValueError(f"{where}: stimulus_id {sid} appears twice")
            seen.add(sid)
            if rec["file"] != f"images/{sid}.png":
                raise ValueError(f"{where}: file {rec['file']!r} should be images/{sid}.png")
            cond = rec["condition"]
            if cond not in MANIFEST_CONDITIONS:
                raise ValueError(f"{where}: condition {cond!r} is not one of {', '.join(MANIFEST_CONDITIONS)}")
            try:
                eps = int(rec["eps"] or 0)
            except ValueError:
                raise ValueError(f"{where}: eps {rec['eps']!r} is not an integer") from None
            if not 0 <= eps <= 255:
                raise ValueError(f"{where}: eps {eps} is outside 0..255")
            pair = rec["pair"] or ""
            if pair and (pair.count(":") != 1 or "" in pair.split(":")):
                raise ValueError(f"{where}: pair {pair!r} is not of the form A:B")
            if cond != "clean" and not pair:
                raise ValueError(f"{where}: a {cond} image needs a pair")
            if cond in ("adversarial", "flip") and rec["target"] not in pair.split(":"):
                raise ValueError(f"{where}: target {rec['target']!r} is not one of the pair {pair!r}")
            prob_text = (rec["ensemble_category_prob"] or "").strip()
            try:
                prob = float(prob_text) if prob_text else None
            except ValueError:
                raise ValueError(f"{where}: ensemble_category_prob {prob_text!r} is not a number") from None
            sha = rec["source_sha256"] or ""
            if not re.match(r"^[0-9a-f]{16,64}$", sha):
                raise ValueError(f"{where}: source_sha256 {sha!r} is not a hex digest")
            rows.append(
                StimulusRow(
                    stimulus_id=sid,
                    source=rec["source"] or "",
                    source_sha256=sha,
                    condition=cond,
                    pair=pair,
                    target=rec["target"] or "",
                    eps=eps,
                    pair_key=rec["pair_key"] or "",
                    ensemble_category=rec["ensemble_category"] or "",
                    ensemble_category_prob=prob,
                )
            )
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows


def read_set(setdir: Path) -> tuple[list[StimulusRow], dict[str, Any], str]:
    """The manifest rows, ``set.json`` and the set's hash (sha256 of manifest.csv's bytes).

    The manifest names every image by the sha256 of its bytes, so hashing the
    manifest pins the images too (and they are verified when imported).
    """
    setdir = Path(setdir)
    if not setdir.is_dir():
        raise FileNotFoundError(f"stimulus set folder {setdir} does not exist")
    rows = read_manifest(setdir)
    info_path = setdir / "set.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{setdir} is not a stimulus set: set.json is missing")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{info_path} is not valid JSON: {exc}") from None
    if not isinstance(info, dict):
        raise ValueError(f"{info_path} must hold a JSON object")
    digest = hashlib.sha256((setdir / "manifest.csv").read_bytes()).hexdigest()
    return rows, info, digest


def import_images(setdir: Path, rows: Iterable[StimulusRow], store: Path, *, link: bool = False) -> int:
    """Copy (or symlink) every image into the content-addressed store, verifying its sha256.

    Returns the number of files added. A file whose bytes do not match its
    stimulus id is refused: the id is the only thing a participant's browser
    sees, so it must name exactly those bytes.
    """
    store.mkdir(parents=True, exist_ok=True)
    added = 0
    for row in rows:
        src = setdir / "images" / f"{row.stimulus_id}.png"
        if not src.is_file():
            raise FileNotFoundError(f"image {src} listed in the manifest is missing")
        data = src.read_bytes()
        if hashlib.sha256(data).hexdigest() != row.stimulus_id:
            raise ValueError(f"image {src.name} does not match its sha256: the set is corrupt or was edited")
        dest = store / f"{row.stimulus_id}.png"
        if dest.exists():
            continue
        tmp = store / f".{row.stimulus_id}.{secrets.token_hex(4)}.tmp"
        if link:
            os.symlink(src.resolve(), tmp)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, dest)
        added += 1
    return added


# =========================================================================== configuration

#: Every key an experiment's TOML may set, with its type and default.
CONFIG_KEYS: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "title": (str, "A short study about images"),
    "conditions": (list, ["targets"]),
    "pairs": (list, None),
    "budgets": (list, None),
    "trials_per_participant": (int, None),
    "practice_trials": (int, 2),
    "catch_trials": (int, 2),
    "catch_min_prob": ((int, float), 0.5),
    "max_catch_failures": (int, None),
    "question": (str, DEFAULT_QUESTION),
    "presentation": ((str, int), "until_response"),
    "fixation_ms": (int, 500),
    "iti_ms": (int, 500),
    "break_every": (int, 0),
    "completion_code": (str, None),
    "screenout_code": (str, None),
    "redirect_url": (str, DEFAULT_REDIRECT),
    "consent_text": (str, None),
    "instructions_text": (str, None),
    "debrief_question": (str, "Did anything look unusual to you? (optional)"),
    "min_window_width": (int, 800),
    "min_window_height": (int, 500),
}

DEFAULT_CONSENT = (
    "You are invited to take part in a short study about how people see images. You will see pairs of "
    "pictures and choose the one that fits a question better. It takes about ten minutes. Your answers are "
    "stored without your name, you may stop at any time, and the data will be used for research only."
)
DEFAULT_INSTRUCTIONS = (
    "On each trial a cross appears in the middle of the screen, then two pictures side by side and a question. "
    "Press F to choose the left picture or J to choose the right picture (or click it). There are no right or "
    "wrong answers: go with your first impression. The first trials are practice."
)


def load_config_file(path: Path | None) -> dict[str, Any]:
    """Read an experiment TOML file (an absent path means all defaults)."""
    if path is None:
        return {}
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None


def resolve_config(raw: Mapping[str, Any]) -> tuple[DesignConfig, dict[str, Any]]:
    """Validate an experiment configuration; returns the design part and every other setting."""
    unknown = sorted(set(raw) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(CONFIG_KEYS)}")
    values: dict[str, Any] = {}
    for key, (kind, default) in CONFIG_KEYS.items():
        value = raw.get(key, default)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ValueError(f"config key {key} has the wrong type ({type(value).__name__})")
        values[key] = value
    for key in ("conditions", "pairs"):
        if values[key] is not None and not all(isinstance(v, str) for v in values[key]):
            raise ValueError(f"config key {key} must be a list of strings")
    if values["budgets"] is not None and not all(type(v) is int for v in values["budgets"]):
        raise ValueError("config key budgets must be a list of integers (8-bit levels)")
    for key in ("practice_trials", "catch_trials", "fixation_ms", "iti_ms", "break_every"):
        if not 0 <= values[key] <= 100_000:
            raise ValueError(f"config key {key} must be between 0 and 100000")
    if not 0.0 <= float(values["catch_min_prob"]) <= 1.0:
        raise ValueError("catch_min_prob must be between 0 and 1")
    presentation = values["presentation"]
    if isinstance(presentation, str):
        if presentation != "until_response":
            raise ValueError('presentation must be "until_response" or a duration in milliseconds')
        presentation_ms = None
    else:
        if not 1 <= presentation <= 60_000:
            raise ValueError("presentation must be between 1 and 60000 milliseconds")
        presentation_ms = presentation
    for conds in [values["conditions"]]:
        for cond in conds:
            if cond not in CONDITIONS:
                raise ValueError(f"unknown trial type {cond!r}: choose from {', '.join(CONDITIONS)}")
    code = values["completion_code"] or "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(8))
    for key, value in (("completion_code", code), ("screenout_code", values["screenout_code"])):
        if value is not None and not CODE_RE.match(value):
            raise ValueError(f"{key} must be 1-64 letters, digits, '-' or '_'")
    redirect = values["redirect_url"]
    if not re.match(r"^https?://", redirect):
        raise ValueError("redirect_url must start with https:// or http://")
    try:
        redirect.format(code="X")
    except (KeyError, IndexError, ValueError):
        raise ValueError("redirect_url may contain {code} and no other {field}") from None
    design = DesignConfig(
        conditions=tuple(values["conditions"]),
        pairs=tuple(values["pairs"]) if values["pairs"] is not None else None,
        budgets=tuple(values["budgets"]) if values["budgets"] is not None else None,
        trials_per_participant=values["trials_per_participant"],
        practice_trials=values["practice_trials"],
        catch_trials=values["catch_trials"],
        catch_min_prob=float(values["catch_min_prob"]),
        question=values["question"],
        presentation_ms=presentation_ms,
    )
    max_fail = values["max_catch_failures"]
    if max_fail is None:
        max_fail = design.catch_trials // 2
    settings = {
        "title": values["title"],
        "question": values["question"],
        "presentation_ms": presentation_ms,
        "fixation_ms": values["fixation_ms"],
        "iti_ms": values["iti_ms"],
        "break_every": values["break_every"],
        "completion_code": code,
        "screenout_code": values["screenout_code"],
        "max_catch_failures": max_fail,
        "redirect_url": redirect,
        "consent_text": values["consent_text"] or DEFAULT_CONSENT,
        "instructions_text": values["instructions_text"] or DEFAULT_INSTRUCTIONS,
        "debrief_question": values["debrief_question"],
        "min_window_width": values["min_window_width"],
        "min_window_height": values["min_window_height"],
        "design": _jsonable(asdict(design)),
        "config": dict(raw),
    }
    return design, settings


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def design_config_from_settings(settings: Mapping[str, Any]) -> DesignConfig:
    d = dict(settings["design"])
    for key in ("conditions", "pairs", "budgets"):
        if d.get(key) is not None:
            d[key] = tuple(d[key])
    return DesignConfig(**d)


# =========================================================================== experiments

def create_experiment(
    db: Database, slug: str, setdir: Path, raw_config: Mapping[str, Any], store: Path, *, link: bool = False
) -> tuple[Experiment, Design, bool]:
    """Import a stimulus set as experiment ``slug``; returns (experiment, design, created).

    Re-running with the same set and the same configuration changes nothing and
    returns ``created=False``; the same slug with anything different is refused.
    """
    if not SLUG_RE.match(slug):
        raise ValueError(f"experiment name {slug!r} must be 1-63 lowercase letters, digits or '-'")
    rows, info, digest = read_set(Path(setdir))
    design_config, settings = resolve_config(raw_config)
    design = Design(rows, design_config)
    settings["design_summary"] = design.summary()

    with db.session() as session:
        existing = session.scalar(select(Experiment).where(Experiment.slug == slug))
        if existing is not None:
            return _same_or_refuse(existing, digest, raw_config), load_design(session, existing), False

    import_images(Path(setdir), rows, store, link=link)
    try:
        with db.write() as session:
            exp = Experiment(
                slug=slug, set_hash=digest, set_info=_jsonable(info), settings=settings, n_lists=design.n_lists,
                active=True,
            )
            session.add(exp)
            session.flush()
            session.add_all(
                Stimulus(
                    experiment_id=exp.id, stimulus_id=r.stimulus_id, source=r.source, source_sha256=r.source_sha256,
                    condition=r.condition, pair=r.pair, target=r.target, eps=r.eps, pair_key=r.pair_key,
                    ensemble_category=r.ensemble_category, ensemble_category_prob=r.ensemble_category_prob,
                )
                for r in rows
            )
    except IntegrityError:  # created concurrently under the same slug
        with db.session() as session:
            existing = session.scalar(select(Experiment).where(Experiment.slug == slug))
            assert existing is not None
            return _same_or_refuse(existing, digest, raw_config), load_design(session, existing), False
    return exp, design, True


def _same_or_refuse(existing: Experiment, digest: str, raw_config: Mapping[str, Any]) -> Experiment:
    if existing.set_hash != digest:
        raise FileExistsError(
            f"experiment {existing.slug!r} already exists with a different stimulus set; choose another --name"
        )
    if existing.settings.get("config") != _jsonable(dict(raw_config)):
        raise FileExistsError(
            f"experiment {existing.slug!r} already exists with a different configuration; choose another --name"
        )
    return existing


_DESIGNS: dict[tuple[str, int, str, str], Design] = {}
_DESIGNS_LOCK = threading.Lock()


def load_design(session: Session, exp: Experiment) -> Design:
    """The experiment's design, rebuilt from its stored stimuli (cached: experiments never change)."""
    key = (str(session.get_bind().url), exp.id, exp.set_hash, json.dumps(exp.settings["design"], sort_keys=True))
    with _DESIGNS_LOCK:
        cached = _DESIGNS.get(key)
    if cached is not None:
        return cached
    rows = [
        StimulusRow(
            stimulus_id=s.stimulus_id, source=s.source, source_sha256=s.source_sha256, condition=s.condition,
            pair=s.pair, target=s.target, eps=s.eps, pair_key=s.pair_key, ensemble_category=s.ensemble_category,
            ensemble_category_prob=s.ensemble_category_prob,
        )
        for s in session.scalars(select(Stimulus).where(Stimulus.experiment_id == exp.id))
    ]
    design = Design(rows, design_config_from_settings(exp.settings))
    with _DESIGNS_LOCK:
        _DESIGNS[key] = design
    return design


def get_experiment(session: Session, slug: str) -> Experiment:
    exp = session.scalar(select(Experiment).where(Experiment.slug == slug)) if SLUG_RE.match(slug or "") else None
    if exp is None:
        raise NotFound(f"no experiment named {slug!r}")
    return exp


def list_counts(session: Session, exp: Experiment) -> list[int]:
    """Participants per list who count toward filling it (in progress or completed)."""
    counts = [0] * exp.n_lists
    rows = session.execute(
        select(Participant.list_index, func.count())
        .where(Participant.experiment_id == exp.id, Participant.status != "screened_out")
        .group_by(Participant.list_index)
    )
    for list_index, n in rows:
        counts[list_index] = n
    return counts


# =========================================================================== participants

def _clean_id(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not TOKEN_RE.match(value):
        raise StudyError(f"{name} must be 1-128 letters, digits, '-' or '_'")
    return value


def start_participant(
    db: Database, slug: str, prolific_pid: Any = None, study_id: Any = None, session_id: Any = None
) -> tuple[Participant, bool]:
    """Create a participant (least-filled list, fresh seed) or resume the one with this PROLIFIC_PID."""
    pid = _clean_id(prolific_pid, "PROLIFIC_PID")
    study = _clean_id(study_id, "STUDY_ID")
    sess = _clean_id(session_id, "SESSION_ID")
    with db.session() as session:
        exp = get_experiment(session, slug)
        if pid is not None:
            found = session.scalar(
                select(Participant).where(Participant.experiment_id == exp.id, Participant.prolific_pid == pid)
            )
            if found is not None:
                return found, False
        if not exp.active:
            raise Forbidden("this study is not accepting new participants")
        design = load_design(session, exp)
        exp_id = exp.id
    try:
        with db.write() as session:
            # Serialise assignments within this experiment (a no-op lock on SQLite, which already holds one).
            exp = session.scalar(select(Experiment).where(Experiment.id == exp_id).with_for_update())
            assert exp is not None
            if pid is not None:
                found = session.scalar(
                    select(Participant).where(Participant.experiment_id == exp.id, Participant.prolific_pid == pid)
                )
                if found is not None:
                    return found, False
            counts = list_counts(session, exp)
            list_index = counts.index(min(counts))
            seed = secrets.randbelow(2**31)
            specs = design.participant_trials(list_index, seed)
            participant = Participant(
                experiment_id=exp.id, public_id=secrets.token_hex(8), token=secrets.token_urlsafe(24),
                prolific_pid=pid, study_id=study, session_id=sess, list_index=list_index, seed=seed,
                status="in_progress", n_trials=len(specs), next_index=0,
            )
            session.add(participant)
            session.flush()
            session.add_all(
                Trial(
                    public_id=secrets.token_hex(8), participant_id=participant.id, index=i, kind=s.kind,
                    condition=s.condition, question=s.question, question_target=s.question_target, eps=s.eps,
                    source=s.source, pair_key=s.pair_key, left_stimulus_id=s.left_stimulus_id,
                    right_stimulus_id=s.right_stimulus_id, left_target=s.left_target, right_target=s.right_target,
                    left_condition=s.left_condition, right_condition=s.right_condition, target_side=s.target_side,
                    presentation_ms=s.presentation_ms,
                )
                for i, s in enumerate(specs)
            )
        return participant, True
    except IntegrityError:
        if pid is None:
            raise
        with db.session() as session:  # the same PROLIFIC_PID arrived twice at once: resume the winner
            found = session.scalar(
                select(Participant).where(Participant.experiment_id == exp_id, Participant.prolific_pid == pid)
            )
            if found is None:
                raise
            return found, False


def get_participant(session: Session, token: Any) -> Participant:
    if not isinstance(token, str) or not TOKEN_RE.match(token):
        raise NotFound("unknown participant")
    participant = session.scalar(select(Participant).where(Participant.token == token))
    if participant is None:
        raise NotFound("unknown participant")
    return participant


def participant_state(session: Session, participant: Participant) -> dict[str, Any]:
    """What the participant's browser may know: progress and, once finished, the code. No design details."""
    exp = session.get(Experiment, participant.experiment_id)
    assert exp is not None
    settings = exp.settings
    n_practice = session.scalar(
        select(func.count()).select_from(Trial).where(Trial.participant_id == participant.id, Trial.kind == "practice")
    )
    code = None
    if participant.status == "completed":
        code = settings["completion_code"]
    elif participant.status == "screened_out":
        code = settings["screenout_code"]
    redirect = None
    if code and participant.prolific_pid:
        redirect = settings["redirect_url"].format(code=code)
    return {
        "token": participant.token,
        "status": participant.status,
        "consented": participant.consented_at is not None,
        "browser_checked": participant.browser is not None,
        "n_trials": participant.n_trials,
        "n_practice": n_practice,
        "next_index": participant.next_index,
        "debriefed": participant.debrief is not None,
        "completion_code": code,
        "redirect_url": redirect,
    }


def record_consent(db: Database, token: Any) -> dict[str, Any]:
    with db.write() as session:
        participant = get_participant(session, token)
        session.execute(
            update(Participant)
            .where(Participant.id == participant.id, Participant.consented_at.is_(None))
            .values(consented_at=utcnow())
        )
        session.flush()
        session.refresh(participant)
        return participant_state(session, participant)


#: A field spec is (kind, low, high) with kind bool/int/number/str (ranges or lengths), or ("enum", choices, None).
FieldSpec = tuple[str, Any, Any]

BROWSER_FIELDS: dict[str, FieldSpec] = {
    "window_width": ("int", 0, 100_000),
    "window_height": ("int", 0, 100_000),
    "screen_width": ("int", 0, 100_000),
    "screen_height": ("int", 0, 100_000),
    "device_pixel_ratio": ("number", 0, 64),
    "refresh_hz": ("number", 1, 1000),
    "image_px": ("int", 0, 100_000),
    "user_agent": ("str", 0, 512),
    "fullscreen": ("bool", 0, 1),
}


def validate_fields(payload: Any, spec: Mapping[str, FieldSpec], required: Iterable[str]) -> dict:
    """Check a JSON object against a flat field spec: types, ranges, required and unknown keys."""
    if not isinstance(payload, dict):
        raise StudyError("the request body must be a JSON object")
    unknown = sorted(set(payload) - set(spec))
    if unknown:
        raise StudyError(f"unknown field(s): {', '.join(unknown)[:200]}")
    for key in required:
        if payload.get(key) is None:
            raise StudyError(f"field {key} is required")
    out: dict[str, Any] = {}
    for key, value in payload.items():
        kind, low, high = spec[key]
        if value is None:
            out[key] = None
            continue
        if kind == "bool":
            if not isinstance(value, bool):
                raise StudyError(f"field {key} must be true or false")
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise StudyError(f"field {key} must be an integer between {low:g} and {high:g}")
        elif kind == "number":
            if (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or not low <= value <= high
            ):
                raise StudyError(f"field {key} must be a number between {low:g} and {high:g}")
            value = float(value)
        elif kind == "str":
            if not isinstance(value, str) or not low <= len(value) <= high:
                size = f"at most {high:g}" if low == 0 else f"{low:g} to {high:g}"
                raise StudyError(f"field {key} must be a string of {size} characters")
            if "\x00" in value or not _encodable(value):
                raise StudyError(f"field {key} contains characters that cannot be stored")
        elif kind == "enum":
            if value not in low:
                raise StudyError(f"field {key} must be one of {', '.join(map(repr, low))}")
        out[key] = value
    return out


def _encodable(text: str) -> bool:
    """False for lone surrogates ("\\ud800" in JSON), which no database can store as text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def record_browser_check(db: Database, token: Any, payload: Any) -> dict[str, Any]:
    data = validate_fields(payload, BROWSER_FIELDS, ("window_width", "window_height"))
    with db.write() as session:
        participant = get_participant(session, token)
        if participant.consented_at is None:
            raise Forbidden("consent is needed first")
        if participant.browser is None:  # the first check is the one kept
            participant.browser = data
            participant.refresh_hz = data.get("refresh_hz")
        session.flush()
        return participant_state(session, participant)


def _ready_for_trials(participant: Participant) -> None:
    if participant.consented_at is None:
        raise Forbidden("consent is needed before the trials")
    if participant.browser is None:
        raise Forbidden("the browser check is needed before the trials")


def trial_view(trial: Trial) -> dict[str, Any]:
    """A trial as the browser sees it: opaque ids and image URLs only, nothing about targets or budgets."""
    return {
        "id": trial.public_id,
        "index": trial.index,
        "practice": trial.kind == "practice",
        "question": trial.question,
        "left": f"/stimuli/{trial.left_stimulus_id}.png",
        "right": f"/stimuli/{trial.right_stimulus_id}.png",
        "presentation_ms": trial.presentation_ms,
    }


def list_trials(db: Database, token: Any, start: int | None, count: int) -> dict[str, Any]:
    with db.session() as session:
        participant = get_participant(session, token)
        _ready_for_trials(participant)
        first = participant.next_index if start is None else start
        trials = session.scalars(
            select(Trial)
            .where(Trial.participant_id == participant.id, Trial.index >= first)
            .order_by(Trial.index)
            .limit(count)
        ).all()
        return {"next_index": participant.next_index, "n_trials": participant.n_trials,
                "trials": [trial_view(t) for t in trials]}


RESPONSE_FIELDS: dict[str, FieldSpec] = {
    "trial_id": ("str", 1, 32),
    "idempotency_key": ("str", 8, 64),
    "response": ("enum", ("left", "right"), None),
    "response_source": ("enum", ("key", "click"), None),
    "rt_ms": ("number", 0, 3_600_000),
    "onset_frame_ms": ("number", 0, 1e12),
    "offset_frame_ms": ("number", 0, 1e12),
    "fullscreen": ("bool", 0, 1),
    "blurred": ("bool", 0, 1),
    "blur_events": ("int", 0, 100_000),
}


def _answer(trial: Trial, response: Response, n_trials: int) -> dict[str, Any]:
    """The reply to a stored response; a replay gets exactly the same reply."""
    return _answer_values(trial.public_id, trial.index, n_trials, response.server_received_at)


def _answer_values(trial_public_id: str, index: int, n_trials: int, received_at: datetime) -> dict[str, Any]:
    return {
        "trial_id": trial_public_id,
        "index": index,
        "stored": True,
        "next_index": index + 1,
        "done": index + 1 >= n_trials,
        "received_at": iso_utc(received_at),
    }


# The fast path's statements, built once: building a statement and computing its cache key cost
# more CPU than running it, and a prebuilt statement memoizes its key (SQLAlchemy then reuses the
# compiled SQL). Table-level (Core) constructs avoid the ORM's per-call overhead.
_P, _T, _R = Participant.__table__, Trial.__table__, Response.__table__
_FAST_LOOKUP = (
    select(_P.c.id, _P.c.n_trials, _P.c.next_index, _P.c.status, _P.c.consented_at, _P.c.browser,
           _T.c.id.label("trial_id"), _T.c.index.label("trial_index"))
    .select_from(_P.outerjoin(_T, and_(_T.c.participant_id == _P.c.id, _T.c.public_id == bindparam("trial_pid"))))
    .where(_P.c.token == bindparam("token"))
)
_FAST_ADVANCE = (
    update(_P)
    .where(_P.c.id == bindparam("b_pid"), _P.c.next_index == bindparam("b_index"))
    .values(next_index=bindparam("b_index") + 1)
)
_FAST_INSERT = insert(_R)


class _NotSimple(Exception):
    """The fast path cannot store this answer as is; the careful path decides what happens."""


def _replay(session: Session, participant_id: int, n_trials: int, key: str, trial_public_id: str):
    stored = session.scalar(
        select(Response).where(Response.participant_id == participant_id, Response.idempotency_key == key)
    )
    if stored is None:
        return None
    trial = session.get(Trial, stored.trial_id)
    assert trial is not None
    if trial.public_id != trial_public_id:
        raise Conflict("this idempotency key was already used for another trial")
    return _answer(trial, stored, n_trials)


def record_response(db: Database, token: Any, payload: Any) -> tuple[dict[str, Any], bool]:
    """Store one answer; returns (answer, replayed). Raises NotFound/Conflict/Forbidden/StudyError."""
    data = validate_fields(payload, RESPONSE_FIELDS, ("trial_id", "idempotency_key", "response", "rt_ms"))
    source = data.get("response_source") or "key"
    key, trial_pid = data["idempotency_key"], data["trial_id"]
    if not KEY_RE.match(key):
        raise StudyError("idempotency_key must be 8-64 letters, digits, '-' or '_'")
    if not TOKEN_RE.match(trial_pid):
        raise NotFound("no such trial for this participant")
    if not isinstance(token, str) or not TOKEN_RE.match(token):
        raise NotFound("unknown participant")

    # Fast path (almost every request): the next trial of a ready participant, in one short
    # transaction of three prebuilt statements. Anything unusual (replay, wrong order, not ready,
    # a race) falls through to the careful path below, which gives the precise answer.
    try:
        with db.write_connection() as conn:
            row = conn.execute(_FAST_LOOKUP, {"token": token, "trial_pid": trial_pid}).first()
            if row is None:
                raise NotFound("unknown participant")
            if (
                row.trial_id is None or row.trial_index != row.next_index or row.status != "in_progress"
                or row.consented_at is None or row.browser is None
            ):
                raise _NotSimple
            moved = conn.execute(_FAST_ADVANCE, {"b_pid": row.id, "b_index": row.trial_index}).rowcount
            if moved != 1:
                raise _NotSimple
            received = utcnow()
            conn.execute(
                _FAST_INSERT,
                {
                    "trial_id": row.trial_id, "participant_id": row.id, "idempotency_key": key,
                    "response": data["response"], "response_source": source, "rt_ms": data["rt_ms"],
                    "onset_frame_ms": data.get("onset_frame_ms"), "offset_frame_ms": data.get("offset_frame_ms"),
                    "fullscreen": bool(data.get("fullscreen")), "blurred": bool(data.get("blurred")),
                    "blur_events": int(data.get("blur_events") or 0), "server_received_at": received,
                },
            )
        return _answer_values(trial_pid, row.trial_index, row.n_trials, received), False
    except (_NotSimple, IntegrityError):
        pass

    conflict: StudyError | None = None
    try:
        with db.write() as session:
            participant = get_participant(session, token)
            replay = _replay(session, participant.id, participant.n_trials, key, trial_pid)
            if replay is not None:
                return replay, True
            _ready_for_trials(participant)
            trial = session.scalar(
                select(Trial).where(Trial.public_id == trial_pid, Trial.participant_id == participant.id)
            )
            if trial is None:
                raise NotFound("no such trial for this participant")
            if participant.status != "in_progress":
                raise Conflict("this participant has already finished")
            if trial.index < participant.next_index:
                raise Conflict("this trial was already answered", next_index=participant.next_index)
            if trial.index != participant.next_index:
                raise Conflict(
                    f"trials must be answered in order: the next one is {participant.next_index}",
                    next_index=participant.next_index,
                )
            moved = session.execute(
                update(Participant)
                .where(Participant.id == participant.id, Participant.next_index == trial.index)
                .values(next_index=trial.index + 1)
            ).rowcount
            if moved != 1:
                raise Conflict("another answer to this trial was stored first")
            response = Response(
                trial_id=trial.id, participant_id=participant.id, idempotency_key=key, response=data["response"],
                response_source=source, rt_ms=data["rt_ms"], onset_frame_ms=data.get("onset_frame_ms"),
                offset_frame_ms=data.get("offset_frame_ms"), fullscreen=bool(data.get("fullscreen")),
                blurred=bool(data.get("blurred")), blur_events=int(data.get("blur_events") or 0),
                server_received_at=utcnow(),
            )
            session.add(response)
            session.flush()
            answer = _answer(trial, response, participant.n_trials)
        return answer, False
    except Conflict as exc:
        conflict = exc
    except IntegrityError:
        conflict = Conflict("another answer to this trial was stored first")
    # A concurrent request may have stored this very key: then this is a replay, not a conflict.
    with db.session() as session:
        participant = get_participant(session, token)
        replay = _replay(session, participant.id, participant.n_trials, key, trial_pid)
        if replay is not None:
            return replay, True
    raise conflict


def finish(db: Database, token: Any, payload: Any) -> dict[str, Any]:
    """Record the debrief answer and complete (or screen out) the participant; idempotent."""
    data = validate_fields(payload, {"text": ("str", 0, 5000)}, ())
    text = data.get("text") or ""
    with db.write() as session:
        participant = get_participant(session, token)
        if participant.status != "in_progress":
            return participant_state(session, participant)
        if participant.next_index < participant.n_trials:
            raise Conflict(
                f"{participant.n_trials - participant.next_index} trial(s) are not answered yet",
                next_index=participant.next_index,
            )
        exp = session.get(Experiment, participant.experiment_id)
        assert exp is not None
        failures = session.scalar(
            select(func.count())
            .select_from(Response)
            .join(Trial, Trial.id == Response.trial_id)
            .where(Trial.participant_id == participant.id, Trial.kind == "catch", Response.response != Trial.target_side)
        ) or 0
        screen_out = bool(exp.settings.get("screenout_code")) and failures > exp.settings["max_catch_failures"]
        session.execute(
            update(Participant)
            .where(Participant.id == participant.id, Participant.status == "in_progress")
            .values(
                status="screened_out" if screen_out else "completed",
                debrief=text,
                catch_failures=failures,
                completed_at=utcnow(),
            )
        )
        session.flush()
        session.refresh(participant)
        return participant_state(session, participant)


def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z; SQLite hands back naive datetimes, which are UTC by construction."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
