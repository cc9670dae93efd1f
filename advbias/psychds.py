"""The trial export as a Psych-DS dataset (schema 1.4.0): the layout, ``dataset_description.json`` and its reader.

Psych-DS (https://psych-ds.github.io/) is the BIDS-like standard psychology's data
repositories are adopting: a folder with a schema.org ``dataset_description.json``
that describes every column (``variableMeasured``) and data files under ``data/``
named by keyword-value pairs ending in ``_data.csv``. ``advbias export --format
psychds`` writes one; ``advbias analyze FOLDER`` reads it back. Where the data came
from (the stimulus set's id, the analysis plan stored before the first answer, the
time of that answer) is written in schema.org terms, so a generic validator accepts
it and :func:`read_dataset` recovers the export's sidecar exactly.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from advbias.errors import InputError, InputFileExists
from advbias.export import COLUMNS, DESCRIPTIONS, SIDECAR_FORMAT

SCHEMA_VERSION = "1.4.0"
DESCRIPTION_FILE = "dataset_description.json"
DATA_DIR = "data"
#: The Psych-DS rule for data file names: keyword-value pairs, ``_data`` suffix, ``.csv``.
DATAFILE_RE = re.compile(r"([a-z]+-[a-zA-Z0-9]+)(_[a-z]+-[a-zA-Z0-9]+)*_data\.csv")
_UNITS = {"rt_ms": "ms", "presentation_ms": "ms", "onset_frame_ms": "ms", "offset_frame_ms": "ms",
          "server_rt_ms": "ms", "refresh_hz": "Hz", "eps": "8-bit levels (L-infinity)"}


def data_name(slug: str) -> str:
    """``study-<slug>_data.csv``: a Psych-DS keyword value allows letters and digits only."""
    value = re.sub(r"[^a-zA-Z0-9]", "", slug) or "advbias"
    return f"study-{value}_data.csv"


def _variables(columns: tuple[str, ...] = COLUMNS) -> list[dict[str, Any]]:
    out = []
    for column in columns:
        item = {"@type": "PropertyValue", "name": column, "description": DESCRIPTIONS[column]}
        if column in _UNITS:
            item["unitText"] = _UNITS[column]
        out.append(item)
    return out


def description(slug: str, sidecar: dict[str, Any]) -> dict[str, Any]:
    """``dataset_description.json`` for experiment ``slug`` with the export's ``sidecar``."""
    summary = sidecar.get("design_summary") or {}
    text = (f"Two-alternative forced-choice trials of the advbias experiment '{slug}': on each trial a participant "
            "chose which of two images looked more like the asked category; one image was perturbed toward that "
            "category by a targeted adversarial attack. One row per answered trial.")
    if summary:
        text += (f" Design: {summary.get('main_trials', '?')} main trials per participant over "
                 f"{summary.get('lists', '?')} counterbalancing lists; budgets "
                 f"{', '.join(map(str, summary.get('budgets', [])))}; trial types "
                 f"{', '.join(summary.get('conditions', []))}.")
    parts: list[dict[str, Any]] = [{"@type": "MediaObject", "name": "experiment configuration",
                                    "encodingFormat": "application/json",
                                    "text": json.dumps({"config": sidecar.get("experiment_config"),
                                                        "design_summary": sidecar.get("design_summary")},
                                                       sort_keys=True)}]
    plan = sidecar.get("analysis_plan")
    if plan:
        parts.append({"@type": "MediaObject", "name": "analysis plan (analysis.toml)",
                      "encodingFormat": "application/toml", "text": plan["text"], "sha256": plan["sha256"],
                      "dateCreated": plan["stored_at"]})
    out: dict[str, Any] = {
        "@context": "https://schema.org/", "@type": "Dataset", "name": f"advbias experiment {slug}",
        "description": text, "schemaVersion": SCHEMA_VERSION, "variableMeasured": _variables(),
        "isBasedOn": {"@type": "Dataset", "name": "stimulus set", "identifier": sidecar.get("stimulus_set")},
        "hasPart": parts, "dateCreated": sidecar.get("exported_at"),
        "keywords": ["perceptual bias", "adversarial images", "two-alternative forced choice"],
    }
    if sidecar.get("first_answer_at"):
        out["temporalCoverage"] = f"{sidecar['first_answer_at']}/{sidecar.get('exported_at') or '..'}"
    return out


def write_dataset(folder: Path, slug: str, csv_bytes: bytes, sidecar: dict[str, Any]) -> Path:
    """Write the dataset into ``folder`` (created; files of an earlier export replaced); returns the data file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputFileExists(f"--out {folder} exists and is not a folder")
    (folder / DATA_DIR).mkdir(parents=True, exist_ok=True)
    data = folder / DATA_DIR / data_name(slug)
    for path, content in ((data, csv_bytes),
                          (folder / DESCRIPTION_FILE,
                           (json.dumps(description(slug, sidecar), indent=2) + "\n").encode("utf-8"))):
        tmp = path.with_name(f".{path.name}.partial")
        tmp.write_bytes(content)
        tmp.replace(path)
    return data


def is_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder holding a Psych-DS ``dataset_description.json``."""
    return Path(path).is_dir() and (Path(path) / DESCRIPTION_FILE).is_file()


def read_dataset(folder: Path) -> tuple[Path, dict[str, Any]]:
    """(the one data file, the export sidecar recovered from the description) of a dataset ``folder``."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / DESCRIPTION_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{folder / DESCRIPTION_FILE} is not valid JSON: {exc}") from None
    files = sorted(p for p in (folder / DATA_DIR).rglob("*_data.csv") if DATAFILE_RE.fullmatch(p.name))
    if len(files) != 1:
        raise InputError(f"{folder} holds {len(files)} Psych-DS data files under data/; advbias analyze reads one")
    parts = {p.get("name"): p for p in meta.get("hasPart", []) if isinstance(p, dict)}
    plan = parts.get("analysis plan (analysis.toml)")
    config = json.loads(parts["experiment configuration"]["text"]) if "experiment configuration" in parts else {}
    first = str(meta.get("temporalCoverage", "")).partition("/")[0] or None
    sidecar = {"format": SIDECAR_FORMAT, "experiment": meta.get("name", ""), "exported_at": meta.get("dateCreated"),
               "stimulus_set": (meta.get("isBasedOn") or {}).get("identifier"),
               "experiment_config": config.get("config"), "design_summary": config.get("design_summary"),
               "analysis_plan": {"text": plan["text"], "sha256": plan["sha256"], "stored_at": plan["dateCreated"]}
               if plan else None, "first_answer_at": first, "n_rows": None}
    return files[0], sidecar
