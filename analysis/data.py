"""Reading and validating a trial export (``docs/export.md``).

The analysis reads the export and nothing else, so this module is the one place
where a malformed file is caught: every problem becomes a :class:`ValueError`
whose first line says what is wrong and where, instead of a pandas traceback
deep inside a statistic.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from advbias.errors import InputError, InputFileNotFound
from advbias.export import COLUMNS, FLOAT_COLUMNS, INT_COLUMNS, KINDS, REQUIRED_COLUMNS, SIDES, STATUSES, TRIAL_TYPES

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

EXPORT_COLUMNS = COLUMNS

#: Columns that hold identifiers or labels (every column the owner types neither as integer nor float):
#: always read as text so that an id such as ``0012`` or ``1e5`` keeps its exact spelling.
_TEXT_COLUMNS = tuple(c for c in COLUMNS if c not in INT_COLUMNS and c not in FLOAT_COLUMNS)
_TRUE = {"1", "1.0", "true", "True", "TRUE"}
_FALSE = {"0", "0.0", "false", "False", "FALSE"}


def _read_table(path: Path) -> "pd.DataFrame":
    import pandas as pd

    if not path.exists():
        raise InputFileNotFound(f"export file not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an export file (CSV or Parquet)")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty: not a trial export")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic == b"PAR1" or path.suffix.lower() in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several unrelated types
            raise InputError(f"{path} cannot be read as Parquet: {str(exc).splitlines()[0]}") from None
        for column in _TEXT_COLUMNS:
            if column in frame.columns:
                frame[column] = frame[column].astype("string")
        return frame
    try:
        frame = pd.read_csv(
            path,
            dtype={c: "string" for c in _TEXT_COLUMNS},
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8",
        )
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty: not a trial export") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a readable CSV export: {str(exc).splitlines()[0]}") from None
    return frame


def _check_values(frame: "pd.DataFrame", column: str, allowed: Iterable[str], path: Path) -> None:
    values = frame[column]
    bad = ~values.isin(list(allowed))
    if bad.any():
        first = values[bad].iloc[0]
        raise InputError(
            f"{path}: column '{column}' has {int(bad.sum())} invalid value(s) (first: {first!r}, "
            f"row {int(bad.to_numpy().nonzero()[0][0]) + 2}); expected one of {', '.join(allowed)}"
        )


def _to_binary(frame: "pd.DataFrame", column: str, path: Path, allow_missing: bool) -> "pd.Series":
    import numpy as np
    import pandas as pd

    raw = frame[column]
    if pd.api.types.is_bool_dtype(raw):
        return raw.astype("float").astype("Int64") if raw.isna().any() else raw.astype("int64")
    text = raw.astype("string").str.strip()
    out = pd.Series(np.nan, index=raw.index, dtype="float64")
    out[text.isin(_TRUE).fillna(False).astype(bool)] = 1.0
    out[text.isin(_FALSE).fillna(False).astype(bool)] = 0.0
    missing = raw.isna() | (text == "").fillna(True)
    bad = out.isna() & ~missing
    if bad.any():
        first = raw[bad].iloc[0]
        raise InputError(f"{path}: column '{column}' must be 0/1, found {first!r} "
                         f"({int(bad.sum())} invalid value(s))")
    if missing.any() and not allow_missing:
        raise InputError(f"{path}: column '{column}' has {int(missing.sum())} empty value(s); it must be 0/1")
    return out.astype("Int64") if missing.any() else out.astype("int64")


def _to_number(frame: "pd.DataFrame", column: str, path: Path, integer: bool, allow_missing: bool) -> "pd.Series":
    import pandas as pd

    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce")
    empty = raw.isna() | (raw.astype("string").str.strip() == "").fillna(True)
    bad = values.isna() & ~empty
    if bad.any():
        raise InputError(f"{path}: column '{column}' must be numeric, found {raw[bad].iloc[0]!r} "
                         f"({int(bad.sum())} invalid value(s))")
    if empty.any() and not allow_missing:
        raise InputError(f"{path}: column '{column}' has {int(empty.sum())} empty value(s)")
    if integer:
        finite = values.dropna()
        if (finite != finite.round()).any():
            raise InputError(f"{path}: column '{column}' must hold whole numbers, "
                             f"found {finite[finite != finite.round()].iloc[0]!r}")
        return values.astype("Int64") if values.isna().any() else values.astype("int64")
    return values.astype("float64")


def validate_export(frame: "pd.DataFrame", path: str | Path = "export") -> "pd.DataFrame":
    """Check an export already in memory and return a copy with normalised dtypes.

    Raises :class:`ValueError` naming the first problem: missing columns, no rows,
    a value outside its documented set, a non-numeric number.
    """
    path = Path(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, list(frame.columns)[:6])) or "none"
        raise InputError(
            f"{path} is not a trial export: missing column(s) {', '.join(missing)} "
            f"(found: {found}{', ...' if len(frame.columns) > 6 else ''}); see docs/export.md"
        )
    if len(frame) == 0:
        raise InputError(f"{path} has a header but no trials")
    frame = frame.copy()
    for column in _TEXT_COLUMNS:
        if column in frame.columns:
            frame[column] = frame[column].astype("string")
    # ``model_set`` is absent from exports of studies without model sets: one set, named "".
    frame["model_set"] = frame["model_set"].fillna("") if "model_set" in frame.columns else ""
    frame["model_set"] = frame["model_set"].astype("string")
    if frame["participant"].isna().any():
        raise InputError(f"{path}: column 'participant' has {int(frame['participant'].isna().sum())} empty value(s)")
    _check_values(frame, "kind", KINDS, path)
    _check_values(frame, "condition", TRIAL_TYPES, path)
    _check_values(frame, "participant_status", STATUSES, path)
    _check_values(frame, "target_side", SIDES, path)
    _check_values(frame, "response", SIDES, path)
    frame["chose_question_target"] = _to_binary(frame, "chose_question_target", path, allow_missing=False)
    frame["fullscreen"] = _to_binary(frame, "fullscreen", path, allow_missing=True)
    frame["blurred"] = _to_binary(frame, "blurred", path, allow_missing=True)
    frame["eps"] = _to_number(frame, "eps", path, integer=True, allow_missing=False)
    frame["trial_index"] = _to_number(frame, "trial_index", path, integer=True, allow_missing=False)
    frame["blur_events"] = _to_number(frame, "blur_events", path, integer=True, allow_missing=True)
    frame["rt_ms"] = _to_number(frame, "rt_ms", path, integer=False, allow_missing=True)
    if (frame["eps"] < 0).any():
        raise InputError(f"{path}: column 'eps' has negative budgets")
    # ``server_rt_ms`` (server-side time to each answer) is optional: older exports lack it.
    for column in dict.fromkeys((*FLOAT_COLUMNS, "server_rt_ms")):
        if column == "rt_ms":
            continue
        if column in frame.columns:
            frame[column] = _to_number(frame, column, path, integer=False, allow_missing=True)
    for column in ("list", "seed"):
        if column in frame.columns:
            frame[column] = _to_number(frame, column, path, integer=True, allow_missing=True)
    duplicated = frame.duplicated(["participant", "trial_index"])
    if duplicated.any():
        row = frame[duplicated].iloc[0]
        raise InputError(f"{path}: participant {row['participant']} has trial_index {row['trial_index']} "
                         f"more than once ({int(duplicated.sum())} duplicate row(s))")
    statuses = frame.groupby("participant", sort=False)["participant_status"].nunique()
    if (statuses > 1).any():
        raise InputError(f"{path}: participant {statuses[statuses > 1].index[0]} has more than one participant_status")
    return frame.reset_index(drop=True)


def load_export(path: str | Path) -> "pd.DataFrame":
    """Read a trial export (CSV or Parquet, by content) and validate it.

    Identifiers stay text, 0/1 columns become integers (nullable where the
    export allows empty cells), numbers become numbers. Any problem raises a
    :class:`ValueError` (or :class:`FileNotFoundError`) with a one-line message.
    """
    path = Path(path)
    return validate_export(_read_table(path), path)
