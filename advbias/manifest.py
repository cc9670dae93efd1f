"""The stimulus manifest, ``SETDIR/manifest.csv``: the one file between ``stimuli`` and ``experiment``.

This module owns the format (``docs/manifest.md`` documents every column): the
column names and order, the image conditions, the ``pair_key`` rule, and the
validating reader and the writer that every consumer uses. ``stimuli`` writes the
manifest (and its unit journals, which are manifests of a few photos) with
:func:`write_manifest` and reads them back with :func:`read_records`; ``experiment`` and
the simulated participants read them through :func:`read_manifest`. The folder layout
(where the manifest and the images lie) is :mod:`advbias.setdir`'s. Plain ``csv`` only,
so reading a set needs no torch.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from advbias.errors import InputError, InputFileNotFound
from advbias.setdir import MANIFEST_NAME, atomic_write_text, csv_text, image_file, manifest_path

#: Manifest columns, in file order.
COLUMNS: tuple[str, ...] = (
    "stimulus_id",
    "file",
    "source",
    "source_sha256",
    "source_label",
    "condition",
    "pair",
    "target",
    "eps",
    "linf",
    "steps",
    "ensemble_target_prob",
    "ensemble_top1",
    "ensemble_top1_name",
    "ensemble_top1_prob",
    "ensemble_category",
    "ensemble_category_prob",
    "ensemble_success",
    "holdout_target_prob",
    "holdout_success",
    "holdout_top1",
    "holdout_top1_name",
    "pair_key",
    "model_set",
)

#: The columns a reader cannot do without (the others are descriptive).
REQUIRED: tuple[str, ...] = (
    "stimulus_id", "file", "source", "source_sha256", "condition", "pair", "target", "eps", "pair_key",
    "ensemble_category", "ensemble_category_prob",
)

#: The values of the ``condition`` column (what an image is), in the order rows are sorted.
IMAGE_CONDITIONS: tuple[str, ...] = ("clean", "adversarial", "flip", "noise", "phase")
#: Conditions made from one adversarial image, so carrying its target (the others carry none).
TARGETED_CONDITIONS: tuple[str, ...] = ("adversarial", "flip", "phase")

#: A model set's name: what ``--model-set NAME=...`` gives, the manifest's ``model_set`` and the export's.
#: Letters, digits, ``.``, ``_``, ``+`` and ``-`` (no ``:``, so that it can end a ``pair_key``).
MODEL_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")

_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)
_SOURCE_HASH = re.compile(r"[0-9a-f]{16,64}", re.ASCII)


def pair_key(source_sha256: str, a: str, b: str, eps: int, model_set: str = "") -> str:
    """The key tying the A and B versions (and controls) of one photo, category pair, budget and model set.

    A set made on one model set (and every set from before model sets) keeps the short
    form ``SHA16:A:B:EPS``; several model sets append ``:NAME``, since each set has its own
    A and B images of the same photo, pair and budget.
    """
    key = f"{source_sha256[:16]}:{a}:{b}:{eps}"
    return f"{key}:{model_set}" if model_set else key


def model_set_name(models: "list[str] | tuple[str, ...]") -> str:
    """The name ``--models M1,M2`` gives its one model set: the models joined by ``+``."""
    return "+".join(models)


@dataclass(frozen=True)
class StimulusRow:
    """One manifest row as the readers use it (the fields the design and the simulators need)."""

    stimulus_id: str
    source: str
    source_sha256: str
    condition: str
    pair: str = ""
    target: str = ""
    eps: int = 0
    pair_key: str = ""
    ensemble_category: str = ""
    ensemble_category_prob: float | None = None
    #: the model set the image was made on; empty for a clean crop (shared by every set) and for
    #: every row of a manifest from before model sets (one set)
    model_set: str = ""


def _parse_row(rec: dict[str, str], where: str) -> StimulusRow:
    """Validate one CSV record; ``ValueError`` names the row and the field."""
    sid = (rec["stimulus_id"] or "").strip()
    if not _HEX64.fullmatch(sid):
        raise InputError(f"{where}: stimulus_id {sid!r} is not a 64-digit lowercase hex sha256")
    if rec["file"] != image_file(sid):
        raise InputError(f"{where}: file {rec['file']!r} should be {image_file(sid)}")
    cond = rec["condition"]
    if cond not in IMAGE_CONDITIONS:
        raise InputError(f"{where}: condition {cond!r} is not one of {', '.join(IMAGE_CONDITIONS)}")
    try:
        eps = int(rec["eps"] or 0)
    except ValueError:
        raise InputError(f"{where}: eps {rec['eps']!r} is not an integer") from None
    if not 0 <= eps <= 255:
        raise InputError(f"{where}: eps {eps} is outside 0..255")
    pair = rec["pair"] or ""
    if pair and (pair.count(":") != 1 or "" in pair.split(":")):
        raise InputError(f"{where}: pair {pair!r} is not of the form A:B")
    if cond != "clean" and not pair:
        raise InputError(f"{where}: a {cond} image needs a pair")
    if cond in TARGETED_CONDITIONS and rec["target"] not in pair.split(":"):
        raise InputError(f"{where}: target {rec['target']!r} is not one of the pair {pair!r}")
    prob_text = (rec["ensemble_category_prob"] or "").strip()
    try:
        prob = float(prob_text) if prob_text else None
    except ValueError:
        raise InputError(f"{where}: ensemble_category_prob {prob_text!r} is not a number") from None
    sha = rec["source_sha256"] or ""
    if not _SOURCE_HASH.fullmatch(sha):
        raise InputError(f"{where}: source_sha256 {sha!r} is not a hex digest")
    model_set = (rec.get("model_set") or "").strip()  # absent in manifests from before model sets
    if model_set and not MODEL_SET_NAME.match(model_set):
        raise InputError(f"{where}: model_set {model_set!r} is not a model-set name (letters, digits, . _ + -)")
    if cond == "clean" and model_set:
        raise InputError(f"{where}: a clean image belongs to no model set (model_set must be empty)")
    return StimulusRow(
        stimulus_id=sid, source=rec["source"] or "", source_sha256=sha, condition=cond, pair=pair,
        target=rec["target"] or "", eps=eps, pair_key=rec["pair_key"] or "",
        ensemble_category=rec["ensemble_category"] or "", ensemble_category_prob=prob, model_set=model_set,
    )


def _open_records(path: Path, required: tuple[str, ...]) -> tuple[list[dict[str, str]], str]:
    """The raw records of a manifest-shaped CSV after the header check (``path`` named in errors)."""
    if not path.is_file():
        raise InputFileNotFound(f"{path.parent} is not a stimulus set: {path.name} is missing")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path} lacks the column(s) {', '.join(missing)}")
            return [dict(rec) for rec in reader], path.name
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path} is not a readable manifest CSV: {exc}") from None


def _validated(path: Path, required: tuple[str, ...],
               on_problem: Callable[[str], None] | None) -> list[tuple[dict[str, str], StimulusRow | None]]:
    """Every record with its parsed row; a bad record raises, or with ``on_problem`` is reported and kept."""
    records, name = _open_records(path, required)
    out: list[tuple[dict[str, str], StimulusRow | None]] = []
    seen: set[str] = set()
    for line, rec in enumerate(records, start=2):
        try:
            row: StimulusRow | None = _parse_row(rec, f"{name} line {line}")
            if row.stimulus_id in seen:
                raise InputError(f"{name} line {line}: stimulus_id {row.stimulus_id} appears twice")
            seen.add(row.stimulus_id)
        except ValueError as exc:
            if on_problem is None:
                raise
            on_problem(str(exc))
            row = None
        out.append((rec, row))
    if not out:
        if on_problem is None:
            raise InputError(f"{path} has no rows")
        on_problem(f"{path} has no rows")
    return out


def _manifest_file(where: Path | str) -> Path:
    """A set folder's manifest, or a manifest-shaped file given directly (a unit journal)."""
    path = Path(where)
    return path if path.suffix == ".csv" and not path.is_dir() else manifest_path(path)


def read_manifest(setdir: Path | str) -> list[StimulusRow]:
    """Parse and validate ``SETDIR/manifest.csv``; ``ValueError`` names the bad row, in file order."""
    setdir = Path(setdir)
    if not manifest_path(setdir).is_file():
        raise InputFileNotFound(f"{setdir} is not a stimulus set: {MANIFEST_NAME} is missing")
    return [row for _, row in _validated(manifest_path(setdir), REQUIRED, None) if row is not None]


def read_records(where: Path | str, *, on_problem: Callable[[str], None] | None = None) -> list[dict[str, str]]:
    """Every column of every row, as the strings of the file (empty cells stay empty), validated.

    ``where``: a set folder or a manifest-shaped file (``stimuli``'s unit journals). Each row is
    checked by the same rules as :func:`read_manifest`, and every column of :data:`COLUMNS` must be
    present. A bad row raises ``ValueError``; with ``on_problem`` it is reported there and kept
    instead, so that ``advbias stimuli verify`` can list every problem of a damaged set.
    """
    # ``model_set`` is absent from manifests made before model sets: one set, read as empty.
    required = tuple(c for c in COLUMNS if c != "model_set")
    return [{"model_set": "", **rec} for rec, _ in _validated(_manifest_file(where), required, on_problem)]


def row_order(row: Mapping[str, Any]) -> tuple:
    """The manifest's row order: by source, then clean first, then pair, budget, model set, condition, target.

    A total, content-only order, so that any way of computing the rows (resumed, or
    split over processes) gives the same file.
    """
    condition = str(row["condition"])
    return (
        str(row["source"]),
        str(row["source_sha256"]),
        0 if condition == "clean" else 1,
        str(row.get("pair") or ""),
        int(row.get("eps") or 0),
        str(row.get("model_set") or ""),
        IMAGE_CONDITIONS.index(condition),
        str(row.get("target") or ""),
        str(row["stimulus_id"]),
    )


def write_manifest(where: Path | str, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write manifest rows atomically (to a set folder, or to a given ``.csv`` file), in :func:`row_order`.

    Values are written as :func:`advbias.setdir.format_cell` spells them; a column outside
    :data:`COLUMNS` is refused, so no writer can add one the readers do not know.
    """
    path = _manifest_file(where)
    atomic_write_text(path, csv_text(sorted(rows, key=row_order), COLUMNS))
    return path


def set_id(setdir: Path | str) -> str:
    """A stimulus set's id: the sha256 of its manifest file's bytes.

    The manifest names every image by the sha256 of its bytes, so this one digest pins
    the images too; the experiment stores it at import and writes it into the export's
    ``stimulus_set`` column, and the analysis compares it with ``--set``.
    """
    import hashlib

    path = manifest_path(setdir)
    if not path.is_file():
        raise InputFileNotFound(f"{setdir} is not a stimulus set: {path.name} is missing")
    return hashlib.sha256(path.read_bytes()).hexdigest()
