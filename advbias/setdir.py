"""The stimulus set folder: its layout, ``set.json`` (reader and writer) and atomic file writes.

A stimulus set is a folder (``docs/manifest.md``)::

    SETDIR/
      images/<stimulus_id>.png   the stimuli, named by the sha256 of their bytes
      manifest.csv               one row per image (format: :mod:`advbias.manifest`)
      set.json                   the set's parameters, models, versions, times and counts
      observers.csv              machine observers (format: :mod:`advbias.observers`)

This module is the one place that spells those names and the one reader and writer of
``set.json``, so that ``stimuli`` (which writes the set), ``experiment`` (which imports it)
and ``analysis`` (which restates its parameters) cannot disagree about either. Plain
``json``/``csv`` only: reading a set needs no torch.

Why atomic writes live here: a crash (or Ctrl-C, or a killed cluster job) must never leave a
half-written image, manifest or ``set.json`` that a later run or the experiment would trust.
Each file is written to a temporary name in the same folder, flushed to disk, and renamed over
its final name with :func:`os.replace`, which is atomic on POSIX and Windows.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from advbias.errors import InputError, InputFileNotFound

#: Format tag written to set.json; bump when the layout changes incompatibly.
SET_FORMAT = "advbias-stimulus-set/1"
#: The names inside a set folder.
IMAGES_DIR = "images"
MANIFEST_NAME = "manifest.csv"
SET_JSON_NAME = "set.json"
OBSERVERS_NAME = "observers.csv"


class SetFileError(InputError):
    """A ``set.json`` that cannot be trusted; ``field`` names the offending field ("" for the whole file)."""

    def __init__(self, path: Path, field: str, problem: str) -> None:
        self.path, self.field = Path(path), field
        super().__init__(f"{path}: {field} {problem}" if field else f"{path} {problem}")


def image_file(stimulus_id: str) -> str:
    """The manifest's ``file`` of an image: its path relative to the set folder."""
    return f"{IMAGES_DIR}/{stimulus_id}.png"


def image_path(setdir: Path | str, stimulus_id: str) -> Path:
    """Where an image of the set lies."""
    return Path(setdir) / image_file(stimulus_id)


def images_dir(setdir: Path | str) -> Path:
    return Path(setdir) / IMAGES_DIR


def manifest_path(setdir: Path | str) -> Path:
    return Path(setdir) / MANIFEST_NAME


def set_json_path(setdir: Path | str) -> Path:
    return Path(setdir) / SET_JSON_NAME


def observers_path(setdir: Path | str) -> Path:
    return Path(setdir) / OBSERVERS_NAME


def require_finished(setdir: Path | str, hint: str = "") -> Path:
    """The set folder, after checking that it exists and holds a manifest and a ``set.json``.

    ``FileNotFoundError`` names what is missing (``hint`` is appended, e.g. "run generate again").
    """
    setdir = Path(setdir)
    if not setdir.is_dir():
        raise InputFileNotFound(f"stimulus set folder not found: {setdir}")
    for name in (MANIFEST_NAME, SET_JSON_NAME):
        if not (setdir / name).is_file():
            raise InputFileNotFound(f"{setdir} has no {name}: not a finished stimulus set{hint}")
    return setdir


# --------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def format_cell(value: Any) -> str:
    """How a value is written into a set's CSV files: empty for None, 6 decimals for probabilities."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as the CSV text of a set's file (header first, ``\\n`` line ends, cells by :func:`format_cell`)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: format_cell(row.get(c)) for c in columns})
    return buf.getvalue()


# --------------------------------------------------------------------------- set.json


def write_set_json(setdir: Path | str, meta: Mapping[str, Any]) -> Path:
    """Write ``SETDIR/set.json`` atomically (the format tag first) and return its path.

    The record is checked with the reader's rules before anything is written, so that a
    writer bug can never leave a ``set.json`` that the readers refuse.
    """
    path = set_json_path(setdir)
    record = {"format": SET_FORMAT, **{k: v for k, v in meta.items() if k != "format"}}
    validate_set_info(record, path)
    atomic_write_json(path, record)
    return path


def read_set_json(where: Path | str) -> dict[str, Any]:
    """The ``set.json`` of a set folder (or the file itself), validated.

    ``FileNotFoundError`` when it is missing; :class:`SetFileError` (a ``ValueError``) naming
    the file and the field when it is not JSON, of another format, or a field has the wrong
    shape. Unknown fields are kept: newer writers may add records the readers do not need.
    """
    path = Path(where)
    if path.is_dir():
        path = set_json_path(path)
    if not path.is_file():
        raise InputFileNotFound(f"{SET_JSON_NAME} not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # not JSON, not UTF-8, or a number too long to convert
        raise SetFileError(path, "", f"is not valid JSON: {exc}") from None
    except RecursionError:
        raise SetFileError(path, "", f"is nested too deeply to be a {SET_JSON_NAME}") from None
    return validate_set_info(data, path)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_list(params: Mapping[str, Any], key: str, path: Path, *, item: str = "str") -> None:
    value = params.get(key)
    if not isinstance(value, list):
        raise SetFileError(path, f"parameters.{key}", f"must be a list, found {type(value).__name__}")
    for v in value:
        if item == "int" and not (_is_int(v) and 1 <= v <= 255):
            raise SetFileError(path, f"parameters.{key}", f"must hold budgets 1..255, found {v!r}")
        if item == "pair" and not (isinstance(v, str) and v.count(":") == 1 and "" not in v.split(":")):
            raise SetFileError(path, f"parameters.{key}", f"must hold pairs A:B, found {v!r}")
        if item == "str" and not isinstance(v, str):
            raise SetFileError(path, f"parameters.{key}", f"must hold names, found {v!r}")


def _check_parameters(params: Any, path: Path) -> None:
    """The parameters every reader relies on (``verify``, ``report``, ``observe``, the Methods text)."""
    if not isinstance(params, dict):
        raise SetFileError(path, "parameters", f"must be an object, found {type(params).__name__}")
    _check_list(params, "pairs", path, item="pair")
    _check_list(params, "eps", path, item="int")
    for key in ("models", "holdout", "controls"):
        _check_list(params, key, path)
    for key, low in (("steps", 1), ("size", 1)):
        value = params.get(key)
        if not _is_int(value) or value < low:
            raise SetFileError(path, f"parameters.{key}", f"must be a whole number >= {low}, found {value!r}")


def validate_set_info(data: Any, path: Path | str = SET_JSON_NAME) -> dict[str, Any]:
    """Check a parsed ``set.json`` record (``path`` only names it in errors); returns it unchanged."""
    path = Path(path)
    if not isinstance(data, dict):
        raise SetFileError(path, "", f"must hold a JSON object, found {type(data).__name__}")
    fmt = data.get("format")
    if fmt != SET_FORMAT:
        raise SetFileError(path, "format", f"is {fmt!r}, not {SET_FORMAT!r}: not a stimulus set this version reads")
    _check_parameters(data.get("parameters"), path)
    for key in ("attack", "sources"):
        if key in data and not isinstance(data[key], dict):
            raise SetFileError(path, key, f"must be an object, found {type(data[key]).__name__}")
    for key in ("models", "holdout_models"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
            raise SetFileError(path, key, "must be a list of objects")
    for key in ("counts", "run"):
        value = data.get(key)
        if value is not None and not isinstance(value, dict):
            raise SetFileError(path, key, f"must be an object or null, found {type(value).__name__}")
    counts = data.get("counts") or {}
    for key, value in counts.items():
        if not _is_int(value) or value < 0:
            raise SetFileError(path, f"counts.{key}", f"must be a count, found {value!r}")
    return data
