"""``advbias analyze``: one export (a file or a Psych-DS folder) in, every table, figure and the report out.

The inputs are checked against each other before anything is computed: the export's
``stimulus_set`` id against the set given with ``--set`` (a report must never describe
another set's photos), the analysis plan stored with the experiment against the
settings used (:mod:`analysis.prereg`). When the exclusions leave nobody, the
exclusion tables and a report saying who was excluded by which rule are still written,
and the command fails with one line.
"""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .config import AnalysisConfig
from .document import Doc, sha256, versions
from .report import NothingLeftError, analyze, figures_for, write_report

from advbias.errors import InputError, InputFileExists

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def load_input(path: Path) -> tuple["pd.DataFrame", dict[str, Any] | None, Path]:
    """(validated export, its sidecar or None, the data file) from an export file or a Psych-DS folder."""
    from advbias.export import read_sidecar
    from advbias.psychds import is_dataset, read_dataset

    from .data import load_export

    if is_dataset(path):
        data, sidecar = read_dataset(path)
        return load_export(data), sidecar, data
    return load_export(path), read_sidecar(path), path


def check_set(df: "pd.DataFrame", sidecar: Mapping[str, Any] | None, set_path: Path) -> str | None:
    """The id of the set at ``set_path``; refuses (ValueError naming both) a set the export was not made with."""
    from advbias.manifest import set_id

    folder = set_path.parent if set_path.is_file() else set_path
    used = set()
    if "stimulus_set" in df.columns:
        used = {str(v) for v in df["stimulus_set"].dropna().unique() if str(v)}
    if not used and sidecar and sidecar.get("stimulus_set"):
        used = {str(sidecar["stimulus_set"])}
    try:
        given = set_id(folder)
    except FileNotFoundError:
        if used:  # the export names its set, and nothing here can show that this is it
            raise InputError(f"--set {folder} has no manifest, so it cannot be checked against the export's "
                             f"stimulus set {sorted(used)[0][:16]}") from None
        return None
    if used and used != {given}:
        raise InputError(f"--set {folder} is stimulus set {given[:16]}, but the export was made with "
                         f"{', '.join(sorted(u[:16] for u in used))}: give the set the experiment imported")
    return given


def _nothing_left(out: Path, exc: NothingLeftError, provenance: Mapping[str, Any], config: AnalysisConfig) -> None:
    """exclusions.csv and friends, and a report that says who was excluded by which rule."""
    out.mkdir(parents=True, exist_ok=True)
    for name, table in exc.tables.items():
        table.to_csv(out / f"{name}.csv", index=False)
    doc = Doc(out)
    summary, counts = exc.tables["participants"], exc.tables["exclusion_counts"]
    doc.heading("Nothing left to analyse")
    kept = summary[~summary["excluded"]]
    why = ("every participant was excluded" if kept.empty else
           f"the {len(kept)} kept participant(s) have no main trial inside the response-time window")
    doc.para(f"Input `{provenance['input']}`: {len(summary)} participant(s); {why}, so no bias can be estimated. "
             "Each participant's reasons are in exclusions.csv; the rules are the [exclusions] settings below.")
    doc.table(counts, "exclusion_counts.csv")
    doc.table(exc.tables["exclusions"].head(50), "exclusions.csv")
    doc.para("`" + json.dumps(config.exclusions.__dict__, sort_keys=True) + "`", note=True)
    doc.write("Perceptual bias analysis: nothing left after exclusions")


def run_analysis(path: str | Path, out: str | Path,
                 config: AnalysisConfig | Mapping[str, Any] | str | Path | None = None,
                 progress: bool = False, *, set_path: str | Path | None = None,
                 observers: str | Path | None = None) -> dict[str, "pd.DataFrame"]:
    """Analyse the export at ``path`` (a file, or a Psych-DS folder) and write everything into ``out``.

    ``config``: settings to use instead of the plan stored with the experiment (the
    report then lists each deviation); ``set_path``: the stimulus set (folder or its
    set description) for the Methods paragraph, refused when the export names another
    set; ``observers``: a stimulus set's ``observers.csv`` (or its folder) to draw
    machine observers beside the people. Returns the tables (name -> DataFrame).
    Files of a previous run in ``out`` are overwritten; nothing else there is touched.
    """
    from .observers import read_observers
    from .prereg import resolve
    from .writeup import read_set

    started = time.perf_counter()
    path, out = Path(path), Path(out)
    if out.exists() and not out.is_dir():
        raise InputFileExists(f"--out {out} exists and is not a folder")
    df, sidecar, data = load_input(path)
    config, registration = resolve(sidecar, config)
    set_info = read_set(set_path) if set_path is not None else None
    set_id = check_set(df, sidecar, Path(set_path)) if set_path is not None else None
    machine = read_observers(observers) if observers is not None else None
    provenance: dict[str, Any] = {
        "input": data.name, "input_sha256": sha256(data), "input_rows": int(len(df)),
        "experiments": sorted(map(str, df["experiment"].dropna().unique())) if "experiment" in df else [],
        "set": str(set_path) if set_path is not None else None, "set_id": set_id,
        "observers": str(observers) if observers is not None else None, "registration": registration.to_dict(),
        "settings": config.to_dict(), "versions": versions(),
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    try:
        tables = analyze(df, config, progress=progress, observers=machine)
    except NothingLeftError as exc:
        _nothing_left(out, exc, provenance, config)
        n = len(exc.tables["exclusions"])
        raise NothingLeftError(f"no main trials left after exclusions ({n} of {len(exc.tables['participants'])} "
                               f"participants excluded): see {out / 'exclusions.csv'} and {out / 'report.html'}",
                               exc.tables) from None
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False)
    for warning in tables["warnings"]["warning"]:
        print(f"advbias: warning: {warning}", file=sys.stderr)
    figures = figures_for(tables, config, out / "figures", machine)
    context = {"registration": registration.sentence(), "design": (sidecar or {}).get("design_summary")}
    write_report(out, df, tables, config, figures, provenance, set_info, context)
    provenance["seconds"] = round(time.perf_counter() - started, 3)
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True), encoding="utf-8")
    return tables
