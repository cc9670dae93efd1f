"""A study end to end through the commands: preregistration, the export's sidecar and set id, Psych-DS.

``advbias experiment create --analysis`` stores the plan before any answer; ``advbias
export`` writes the data with a sidecar that carries it (and the ``stimulus_set``
column); ``advbias analyze`` reports the preregistration, flags each deviating
setting, refuses a stimulus set the export was not made with, and reads the same
data back from a Psych-DS dataset that passes a validator of the Psych-DS 1.4.0
rules (implemented below from the specification's schema: required metadata keys,
schema.org context and type, data file keyword naming, every column described).
"""
from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from advbias.cli import main
from advbias.manifest import set_id

#: Psych-DS 1.4.0, rules/files/tabular_data/data.yaml: the data file name pattern.
DATAFILE = re.compile(r"([a-z]+-[a-zA-Z0-9]+)(_[a-z]+-[a-zA-Z0-9]+)*_data\.csv")
#: Psych-DS 1.4.0, rules/compiled_metadata.yaml: fields required of the metadata of every data file.
REQUIRED_KEYS = ("name", "description", "variableMeasured")


def psychds_problems(root: Path) -> list[str]:
    """Error-level Psych-DS 1.4.0 rule violations of the dataset at ``root`` (empty: valid)."""
    problems = []
    meta_path = root / "dataset_description.json"
    if not meta_path.is_file():
        return ["MISSING_REQUIRED_ELEMENT: dataset_description.json"]
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"JSON_INVALID: {exc}"]
    context = meta.get("@context")
    contexts = context if isinstance(context, list) else [context]
    if not any(str(c).rstrip("/") in ("https://schema.org", "http://schema.org") for c in contexts):
        problems.append("JSON_KEY_REQUIRED: @context must name https://schema.org/")
    if "@type" not in meta:
        problems.append("MISSING_DATASET_TYPE")
    elif meta["@type"] not in ("Dataset", "https://schema.org/Dataset", "http://schema.org/Dataset"):
        problems.append("INCORRECT_DATASET_TYPE")
    problems += [f"JSON_KEY_REQUIRED: {key}" for key in REQUIRED_KEYS if key not in meta]
    described = {v if isinstance(v, str) else v.get("name") for v in meta.get("variableMeasured", [])}
    problems += [f"OBJECT_TYPE_MISSING: variableMeasured {v.get('name')}" for v in meta.get("variableMeasured", [])
                 if isinstance(v, dict) and "@type" not in v]
    data_dir = root / "data"
    files = sorted(p for p in data_dir.rglob("*.csv")) if data_dir.is_dir() else []
    valid = [p for p in files if DATAFILE.fullmatch(p.name)]
    problems += [f"FILENAME_KEYWORD_FORMATTING_ERROR: {p.name}" for p in files if p not in valid]
    if not valid:
        problems.append("MISSING_DATAFILE")
    for path in valid:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
        if not rows or not rows[0]:
            problems.append(f"CSV_HEADER_MISSING: {path.name}")
            continue
        if any(len(r) != len(rows[0]) for r in rows[1:]):
            problems.append(f"CSV_HEADER_LENGTH_MISMATCH: {path.name}")
        missing = [c for c in rows[0] if c not in described]
        if missing:
            problems.append(f"CSV_COLUMN_MISSING_FROM_METADATA: {', '.join(missing)}")
    return problems


def test_the_validator_finds_what_psychds_forbids(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "Study_1.csv").write_text("a,b\n1,2\n")
    (tmp_path / "dataset_description.json").write_text(json.dumps({"@type": "Thing", "variableMeasured": ["a"]}))
    found = " ".join(psychds_problems(tmp_path))
    for code in ("@context", "INCORRECT_DATASET_TYPE", "JSON_KEY_REQUIRED: name", "FILENAME_KEYWORD_FORMATTING_ERROR",
                 "MISSING_DATAFILE"):
        assert code in found
    (tmp_path / "data" / "Study_1.csv").rename(tmp_path / "data" / "study-1_data.csv")
    assert "CSV_COLUMN_MISSING_FROM_METADATA: b" in " ".join(psychds_problems(tmp_path))


@pytest.fixture
def cli(monkeypatch, capsys, instance_dir):  # type: ignore[no-untyped-def]
    """Run ``advbias ARGS`` in-process; returns (status, stdout, stderr)."""
    monkeypatch.setenv("ADVBIAS_INSTANCE_PATH", str(instance_dir))

    def run(*args: object):  # type: ignore[no-untyped-def]
        status = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return status, out, err

    return run


PLAN = ("[analysis]\nn_boot = 100\nprimary = \"mixed_model\"\n\n[exclusions]\nmin_catch_accuracy = 0.0\nmin_rt_ms = 100\n"
        "min_median_server_rt_ms = 0\nmax_rt_over_server_fraction = 1.0\n")


@pytest.fixture
def study(cli, clean_database, stimulus_set, participant, tmp_path):  # type: ignore[no-untyped-def]
    """A preregistered experiment with three participants' answers, exported (CSV and Psych-DS)."""
    plan = tmp_path / "analysis.toml"
    plan.write_text(PLAN)
    # The scripted answers ignore which side a catch trial's asked category is on: let every catch failure pass,
    # so that nobody is screened out by chance (this fixture is about the plan, not about screening).
    config = tmp_path / "exp.toml"
    config.write_text("max_catch_failures = 2\n")
    base = ("--database-url", clean_database)
    status, out, err = cli("experiment", "create", "--stimuli", stimulus_set, "--name", "prereg", "--analysis", plan,
                           "--config", config, *base)
    assert status == 0, err
    assert "analysis plan stored at" in out
    for i in range(3):
        p = participant("prereg", prolific_pid=f"P-{i}").prepare()
        p.answer_all(lambda t, i=i: "left" if (t["index"] + i) % 3 else "right")
        p.finish()
    export = tmp_path / "trials.csv"
    status, out, err = cli("export", "prereg", "--out", export, *base)
    assert status == 0, err
    status, out, err = cli("export", "prereg", "--format", "psychds", "--out", tmp_path / "psychds", *base)
    assert status == 0, err
    return {"export": export, "plan": plan, "psychds": tmp_path / "psychds", "base": base}


def test_preregistration_is_stored_exported_and_reported(cli, study, stimulus_set, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    sidecar = json.loads(study["export"].with_suffix(".json").read_text())
    plan = sidecar["analysis_plan"]
    assert plan["text"] == PLAN and plan["sha256"] == hashlib.sha256(PLAN.encode()).hexdigest()
    assert plan["stored_at"] < sidecar["first_answer_at"] and sidecar["stimulus_set"] == set_id(stimulus_set)
    frame = pd.read_csv(study["export"])
    assert set(frame["stimulus_set"]) == {set_id(stimulus_set)}

    status, _, err = cli("analyze", study["export"], "--out", tmp_path / "planned", "--set", stimulus_set, "--quiet")
    assert status == 0, err
    report = (tmp_path / "planned" / "report.md").read_text()
    assert f"preregistered at {plan['stored_at']} (sha256 {plan['sha256']}), first answer at " \
           f"{sidecar['first_answer_at']}" in report and "follows the stored plan" in report
    assert "counterbalanced" in report and "at random over trials" not in report
    settings = json.loads((tmp_path / "planned" / "provenance.json").read_text())["settings"]
    assert settings["n_boot"] == 100 and settings["exclusions"]["min_rt_ms"] == 100  # the stored plan was used

    other = tmp_path / "other.toml"
    other.write_text(PLAN.replace("min_rt_ms = 100", "min_rt_ms = 200"))
    status, _, err = cli("analyze", study["export"], "--out", tmp_path / "explore", "--config", other, "--quiet")
    assert status == 0, err
    report = (tmp_path / "explore" / "report.md").read_text()
    assert "Exploratory" in report and "exclusions.min_rt_ms: planned 100.0, used 200.0" in report


def test_analyze_refuses_another_stimulus_set(cli, study, stimulus_set, tmp_path) -> None:  # type: ignore[no-untyped-def]
    changed = tmp_path / "changed-set"
    shutil.copytree(stimulus_set, changed)
    lines = (changed / "manifest.csv").read_text().splitlines(keepends=True)
    (changed / "manifest.csv").write_text("".join([lines[0], *reversed(lines[1:])]))
    status, _, err = cli("analyze", study["export"], "--out", tmp_path / "wrong", "--set", changed, "--quiet")
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert set_id(changed)[:16] in err and set_id(stimulus_set)[:16] in err
    assert not (tmp_path / "wrong" / "report.html").exists()


def test_psychds_export_validates_and_analyses(cli, study, tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder = study["psychds"]
    assert psychds_problems(folder) == []
    assert (folder / "data" / "study-prereg_data.csv").is_file()
    meta = json.loads((folder / "dataset_description.json").read_text())
    assert meta["@context"] == "https://schema.org/" and meta["@type"] == "Dataset"
    from advbias.export import COLUMNS, DESCRIPTIONS

    assert [v["name"] for v in meta["variableMeasured"]] == list(COLUMNS)
    assert all(v["description"] == DESCRIPTIONS[v["name"]] for v in meta["variableMeasured"])
    status, _, err = cli("analyze", folder, "--out", tmp_path / "from-psychds", "--quiet")
    assert status == 0, err
    assert "follows the stored plan" in (tmp_path / "from-psychds" / "report.md").read_text()
    direct = pd.read_csv(tmp_path / "from-psychds" / "bias_by_eps.csv")
    status, _, err = cli("analyze", study["export"], "--out", tmp_path / "from-csv", "--quiet")
    assert status == 0, err
    pd.testing.assert_frame_equal(direct, pd.read_csv(tmp_path / "from-csv" / "bias_by_eps.csv"))


def test_everyone_excluded_writes_exclusions_and_exits_with_one_line(cli, study, tmp_path) -> None:  # type: ignore[no-untyped-def]
    strict = tmp_path / "strict.toml"
    strict.write_text("[exclusions]\nmin_rt_ms = 5000\nmax_fast_fraction = 0.0\n")
    out = tmp_path / "none"
    status, _, err = cli("analyze", study["export"], "--out", out, "--config", strict, "--quiet")
    assert status == 2 and len(err.strip().splitlines()) == 1 and "no main trials left after exclusions" in err
    excluded = pd.read_csv(out / "exclusions.csv")
    assert len(excluded) == 3 and excluded["reason"].str.contains("fast_responses").all()
    assert "Nothing left to analyse" in (out / "report.md").read_text()


def test_not_preregistered_says_so(tmp_path) -> None:
    from analysis.run import run_analysis
    from analysis.simulation import simulate_export

    frame = simulate_export(4, 16, seed=1)
    frame.attrs.clear()
    frame.to_csv(tmp_path / "sim.csv", index=False)
    run_analysis(tmp_path / "sim.csv", tmp_path / "out", {"analysis": {"n_boot": 50}})
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Not preregistered" in report and "before the data were seen" not in report
