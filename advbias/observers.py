"""Machine observers, ``SETDIR/observers.csv``: models answering the experiment's trials.

Written by ``advbias stimuli observe`` and read by ``advbias analyze --observers`` and
``advbias stimuli report``; this module owns the format (``docs/manifest.md``, section
"Machine observers"). One row per model set, model, trial type and budget, so that with
several model sets the file is a transfer matrix (the set an image was made on x the
observer that answers):

- ``model_set``: the model set whose images the trials show (empty in files from before
  model sets, which the reader accepts: one set);
- ``model``: the model's name as ``--models`` takes it (``lite2``, a torchvision name, ...);
- ``role``: ``attacked`` (in the ensemble that model set was made on: the ceiling), ``held_out``
  (the set's held-out model) or ``other`` (any further model, among them the models of the other sets);
- ``condition``: the trial type (``targets``, ``vs_clean``, ``vs_flip``, ``vs_noise``, ``vs_phase``), as in the export;
- ``eps``: the budget in 8-bit levels;
- ``n_judgments``: two per image pair (one for each asked category);
- ``bias``: the share of judgments that pick the image perturbed toward the asked category;
- ``ci_low``, ``ci_high``: its 95% interval.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable, Mapping

from advbias.errors import InputError, InputFileNotFound
from advbias.setdir import atomic_write_text, csv_text, observers_path

COLUMNS: tuple[str, ...] = ("model_set", "model", "role", "condition", "eps", "n_judgments", "bias", "ci_low", "ci_high")
ROLES: tuple[str, ...] = ("attacked", "held_out", "other")
#: Columns a file may lack (older files): read as empty.
OPTIONAL: tuple[str, ...] = ("model_set",)

_INTS = ("eps", "n_judgments")
_FLOATS = ("bias", "ci_low", "ci_high")


def read(path: str | Path) -> list[dict[str, Any]]:
    """Read and check an observers.csv (or the one in a set folder); ``ValueError`` names the first problem.

    The one reader of the format: ``stimuli report`` and ``advbias analyze --observers`` both use it.
    Returns the rows in file order with ``eps``/``n_judgments`` as int and the shares as float.
    """
    path = Path(path)
    if path.is_dir():
        path = observers_path(path)
    if not path.is_file():
        raise InputFileNotFound(f"observers file not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or []) and c not in OPTIONAL]
            if missing:
                raise InputError(f"{path} lacks the column(s) {', '.join(missing)} (expected {', '.join(COLUMNS)})")
            rows = [_typed(rec, path, line) for line, rec in enumerate(reader, start=2)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path} is not a readable observers CSV: {exc}") from None
    if not rows:
        raise InputError(f"{path} has a header but no rows")
    return rows


def write(setdir: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``SETDIR/observers.csv`` atomically (columns in :data:`COLUMNS` order) and return its path."""
    path = observers_path(setdir)
    atomic_write_text(path, csv_text(rows, COLUMNS))
    return path


def _typed(rec: dict[str, str], path: Path, line: int) -> dict[str, Any]:
    row: dict[str, Any] = {c: (rec.get(c) or "") if c in OPTIONAL else rec[c] for c in COLUMNS}
    if row["role"] not in ROLES:
        raise InputError(f"{path} line {line}: role {row['role']!r} is not one of {', '.join(ROLES)}")
    for column, kind in [(c, int) for c in _INTS] + [(c, float) for c in _FLOATS]:
        try:
            row[column] = kind(rec[column])
        except (TypeError, ValueError):
            raise InputError(f"{path} line {line}: column '{column}' must be numeric, found {rec[column]!r}") from None
    if not 0.0 <= row["bias"] <= 1.0:
        raise InputError(f"{path} line {line}: column 'bias' must lie between 0 and 1")
    return row
