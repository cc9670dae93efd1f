"""The trial export: one row per answered trial (docs/export.md), as CSV or Parquet.

The analysis stage reads this file and nothing else, so every column the
analysis or a reader of the paper might need is spelled out here, derived from
the stored trial plan and response in one query.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from advbias.errors import InputError, InputFileNotFound
from advbias.export import (
    COLUMNS, FLOAT_COLUMNS, FORMULA_STARTS, INT_COLUMNS, MEASURED_COLUMNS, UNTRUSTED_TEXT_COLUMNS, write_sidecar,
)
from experiment.db import Database
from experiment.models import Participant, Response, Trial, iso_utc, utcnow
from experiment.study import get_experiment

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: ``advbias export --format``: the file's own format (by its name), or a Psych-DS dataset folder.
EXPORT_FORMATS = ("file", "psychds")


def export_rows(db: Database, slug: str, *, include_void: bool = False) -> list[dict[str, Any]]:
    """Every answered trial of experiment ``slug``, ordered by participant and trial index.

    Rehearsals (preview links) are never exported; voided participants only with
    ``include_void``, and then with the status ``void`` (experiment/rehearsal.py).
    """
    with db.session() as s:
        exp = get_experiment(s, slug)
        query = (
            select(Trial, Response, Participant)
            .join(Response, Response.trial_id == Trial.id)
            .join(Participant, Participant.id == Trial.participant_id)
            .where(Participant.experiment_id == exp.id, Participant.preview.is_(False))
            .order_by(Participant.created_at, Participant.id, Trial.index)
        )
        if not include_void:
            query = query.where(Participant.voided_at.is_(None))
        mode = exp.settings.get("fullscreen", "recommended")  # studies made before the setting only recommended it
        rows = []
        for trial, resp, part in s.execute(query):
            chosen = trial.left_target if resp.response == "left" else trial.right_target
            rows.append(
                {
                    "experiment": exp.slug,
                    "stimulus_set": exp.set_hash,
                    "participant": part.public_id,
                    "prolific_pid": part.prolific_pid or "",
                    "study_id": part.study_id or "",
                    "session_id": part.session_id or "",
                    "participant_status": "void" if part.voided_at is not None else part.status,
                    "list": part.list_index,
                    "seed": part.seed,
                    "trial_index": trial.index,
                    "kind": trial.kind,
                    "condition": trial.condition,
                    "question": trial.question,
                    "question_target": trial.question_target,
                    "eps": trial.eps,
                    "model_set": trial.model_set,
                    "source": trial.source,
                    "pair_key": trial.pair_key,
                    "left_stimulus_id": trial.left_stimulus_id,
                    "right_stimulus_id": trial.right_stimulus_id,
                    "left_target": trial.left_target,
                    "right_target": trial.right_target,
                    "left_condition": trial.left_condition,
                    "right_condition": trial.right_condition,
                    "target_side": trial.target_side,
                    "response": resp.response,
                    "chosen_target": chosen,
                    "chose_question_target": int(resp.response == trial.target_side),
                    "response_source": resp.response_source,
                    "rt_ms": resp.rt_ms,
                    "presentation_ms": trial.presentation_ms,
                    "onset_frame_ms": resp.onset_frame_ms,
                    "offset_frame_ms": resp.offset_frame_ms,
                    "refresh_hz": part.refresh_hz,
                    "fullscreen": int(resp.fullscreen),
                    "blurred": int(resp.blurred),
                    "blur_events": resp.blur_events,
                    "fullscreen_mode": mode,
                    "fullscreen_exits": resp.fullscreen_exits,
                    "ignored_keys": resp.ignored_keys,
                    "window_width": resp.window_width,
                    "window_height": resp.window_height,
                    "screen_width": resp.screen_width,
                    "screen_height": resp.screen_height,
                    "device_pixel_ratio": resp.device_pixel_ratio,
                    "image_px": resp.image_px,
                    "server_received_at": iso_utc(resp.server_received_at),
                    "server_rt_ms": resp.server_rt_ms,
                }
            )
    return rows


def export_frame(db: Database, slug: str, *, include_void: bool = False):  # type: ignore[no-untyped-def]
    """The export as a pandas DataFrame with stable dtypes (also when it has no rows)."""
    import pandas as pd

    frame = pd.DataFrame(export_rows(db, slug, include_void=include_void), columns=list(COLUMNS))
    for col in INT_COLUMNS:
        frame[col] = frame[col].astype("int64")
    for col in FLOAT_COLUMNS:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    for col in MEASURED_COLUMNS:  # whole numbers that may be missing: no ".0" in the CSV
        frame[col] = frame[col].astype("Int64")
    for col in COLUMNS:
        if col not in INT_COLUMNS and col not in FLOAT_COLUMNS:
            frame[col] = frame[col].astype("str")
    return frame


def export_format(path: Path) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"cannot tell the format of {path}: use a .csv or .parquet file name")
    return fmt


def neutralise_formula(value: str) -> str:
    """``'-x`` for ``-x``: a spreadsheet opening the CSV shows the text instead of running a formula."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def _write(frame, target, fmt: str) -> None:  # type: ignore[no-untyped-def]
    if fmt == "csv":
        frame = frame.copy()
        for col in UNTRUSTED_TEXT_COLUMNS:
            frame[col] = frame[col].map(neutralise_formula)
        frame.to_csv(target, index=False, lineterminator="\n")
    else:
        frame.to_parquet(target, index=False, engine="pyarrow")


def export_bytes(db: Database, slug: str, fmt: str, *, include_void: bool = False) -> bytes:
    """The export file's bytes (for the admin's download button)."""
    buffer = io.BytesIO()
    _write(export_frame(db, slug, include_void=include_void), buffer, fmt)
    return buffer.getvalue()


def sidecar(db: Database, slug: str, n_rows: int) -> dict[str, Any]:
    """Where an export came from (advbias.export.SIDECAR_KEYS): configuration, set, plan, first answer."""
    with db.session() as s:
        exp = get_experiment(s, slug)
        first = s.scalar(select(func.min(Response.server_received_at))
                         .join(Trial, Trial.id == Response.trial_id)
                         .join(Participant, Participant.id == Trial.participant_id)
                         .where(Participant.experiment_id == exp.id))
        settings = dict(exp.settings)
    return {"format": "", "experiment": slug, "exported_at": iso_utc(utcnow()), "stimulus_set": exp.set_hash,
            "experiment_config": settings.get("config"), "design_summary": settings.get("design_summary"),
            "analysis_plan": settings.get("analysis_plan"), "first_answer_at": iso_utc(first), "n_rows": n_rows}


def write_export(db: Database, slug: str, out: Path, *, include_void: bool = False) -> int:
    """Write the export to ``out`` atomically (a crash never leaves half a file) and its sidecar ``out.json``.

    Returns the row count.
    """
    out = Path(out)
    fmt = export_format(out)
    if not out.parent.exists():
        raise InputFileNotFound(f"folder {out.parent} does not exist")
    frame = export_frame(db, slug, include_void=include_void)
    tmp = out.with_name(f".{out.name}.partial")
    _write(frame, tmp, fmt)
    tmp.replace(out)
    write_sidecar(out, sidecar(db, slug, len(frame)))
    return len(frame)


def write_psychds(db: Database, slug: str, folder: Path, *, include_void: bool = False) -> Path:
    """Write experiment ``slug`` as a Psych-DS dataset in ``folder`` (advbias.psychds); returns the data file."""
    from advbias.psychds import write_dataset

    frame = export_frame(db, slug, include_void=include_void)
    buffer = io.BytesIO()
    _write(frame, buffer, "csv")
    return write_dataset(Path(folder), slug, buffer.getvalue(), sidecar(db, slug, len(frame)))
