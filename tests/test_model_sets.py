"""Model sets and the phase-randomised control, end to end on the bundled models (CPU, small).

One real set is built per module with the command line: 8 builtin photos, cat:truck, budgets 4
and 16, one PGD step, model sets ``A=lite0`` and ``B=lite1``, ``lite2`` held out, the phase
control. The study over both sets runs on the real Flask app (SQLite file) with participants
that take part over HTTP (:mod:`advbias.client`) and answer by the model set of each image.
"""
from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from advbias.cli import main as cli_main
from advbias.manifest import read_manifest

pytestmark = pytest.mark.timeout(900)

GENERATE = ["stimuli", "generate", "--images", "builtin", "--pairs", "cat:truck", "--eps", "4,16", "--steps", "1",
            "--limit", "8", "--model-set", "A=lite0", "--model-set", "B=lite1", "--holdout", "lite2",
            "--controls", "phase", "--no-progress"]


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("modelsets") / "set"
    assert cli_main([*GENERATE, "--out", str(out)]) == 0
    return out


def rows_of(setdir: Path) -> list[dict[str, str]]:
    with open(setdir / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def pixels(setdir: Path, row: dict[str, str]) -> np.ndarray:
    """The file's pixels as int16, channels first."""
    return np.asarray(Image.open(setdir / row["file"]), dtype=np.int16).transpose(2, 0, 1)


def phase_triples(setdir: Path) -> Iterator[tuple[dict[str, str], np.ndarray, np.ndarray, np.ndarray]]:
    """(phase row, clean pixels, adversarial delta, phase delta) for every phase control of the set."""
    rows = rows_of(setdir)
    clean = {r["source_sha256"]: pixels(setdir, r) for r in rows if r["condition"] == "clean"}
    adversarial = {(r["pair_key"], r["target"]): r for r in rows if r["condition"] == "adversarial"}
    for row in rows:
        if row["condition"] == "phase":
            c = clean[row["source_sha256"]]
            yield row, c, pixels(setdir, adversarial[(row["pair_key"], row["target"])]) - c, pixels(setdir, row) - c


def spectrum_error(reference: np.ndarray, other: np.ndarray) -> float:
    """Relative L2 distance between per-channel 2-D amplitude spectra, after the best common scale."""
    a = np.abs(np.fft.fft2(reference.astype(float), axes=(-2, -1)))
    b = np.abs(np.fft.fft2(other.astype(float), axes=(-2, -1)))
    scale = float((a * b).sum() / (a * a).sum())
    return float(np.linalg.norm(b - scale * a) / np.linalg.norm(scale * a))


# --------------------------------------------------------------------------- the set


def test_two_model_sets_make_a_verified_set(two_sets: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["stimuli", "verify", str(two_sets)]) == 0
    assert "OK" in capsys.readouterr().out
    rows = read_manifest(two_sets)
    assert {r.model_set for r in rows} == {"", "A", "B"}
    assert all((r.model_set == "") == (r.condition == "clean") for r in rows)
    per_set = Counter((r.model_set, r.condition) for r in rows if r.condition != "clean")
    # 8 photos x 2 budgets x 2 targets, on each set, for the adversarial images and their phase controls
    assert per_set == {(s, c): 32 for s in "AB" for c in ("adversarial", "phase")}
    assert sum(r.condition == "clean" for r in rows) == 8  # the clean crops are shared by both sets
    assert all(r.pair_key.endswith(f":{r.model_set}") for r in rows if r.condition != "clean")
    meta = json.loads((two_sets / "set.json").read_text())
    assert meta["parameters"]["model_sets"] == {"A": ["lite0"], "B": ["lite1"]}
    recorded = {s["name"]: s for s in meta["model_sets"]}
    assert [m["name"] for m in recorded["A"]["models"]] == ["lite0"]
    assert all(len(m["weights_sha256"]) == 64 for s in recorded.values() for m in s["models"])
    assert recorded["A"]["recipe"]["steps"] == 1 and recorded["B"]["recipe"] == recorded["A"]["recipe"]
    assert meta["counts"]["model_sets"] == 2
    # the held-out model scores every set's images
    for r in rows_of(two_sets):
        assert (r["holdout_target_prob"] != "") == (r["condition"] != "clean")


def test_the_two_sets_are_made_on_their_own_models(two_sets: Path) -> None:
    rows = [r for r in rows_of(two_sets) if r["condition"] == "adversarial"]
    by_set = {(r["source_sha256"], r["eps"], r["target"], r["model_set"]): r["stimulus_id"] for r in rows}
    for (sha, eps, target, model_set), sid in by_set.items():
        if model_set == "A":
            assert by_set[(sha, eps, target, "B")] != sid


def test_every_file_is_within_its_budget_after_rounding(two_sets: Path) -> None:
    rows = rows_of(two_sets)
    clean = {r["source_sha256"]: pixels(two_sets, r) for r in rows if r["condition"] == "clean"}
    for r in rows:
        if r["condition"] != "clean":
            linf = int(np.abs(pixels(two_sets, r) - clean[r["source_sha256"]]).max())
            assert linf <= int(r["eps"]) and linf == int(r["linf"]), r["file"]


def test_generation_resumes_unit_by_unit(two_sets: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    setdir = tmp_path / "set"
    shutil.copytree(two_sets, setdir)
    units = sorted((setdir / "units").glob("unit-*.csv"))
    assert len(units) == 2  # 4 photos per work unit (16 attack items per batch, 4 per photo)
    units[1].unlink()
    (setdir / "manifest.csv").unlink()
    capsys.readouterr()
    assert cli_main([*GENERATE, "--out", str(setdir)]) == 0
    assert "(1 work units computed, 1 reused)" in capsys.readouterr().out
    assert (setdir / "manifest.csv").read_bytes() == (two_sets / "manifest.csv").read_bytes()
    # the same command with another model set is refused, not mixed into the set
    changed = [a if a != "B=lite1" else "B=lite2" for a in GENERATE if a not in ("--holdout", "lite2")]
    assert cli_main([*changed, "--out", str(setdir)]) == 2
    assert "model_sets" in capsys.readouterr().err


def test_phase_control_keeps_the_amplitude_spectrum_and_not_the_pixels(two_sets: Path) -> None:
    """Tolerances: the saved control is rounded to whole levels, which adds at most 0.5 level per pixel.
    By Parseval that moves the amplitude spectrum by at most that error's energy, about
    sqrt(1/12) / rms(control) relative: 0.35 at eps 4 (rms near 0.9 level) and 0.10 at eps 16 (rms near
    3.4). Random +/-eps noise of the same budget is further than 1.0 from the adversarial spectrum."""
    tolerance = {4: 0.35, 16: 0.10}
    seen = Counter()
    for row, clean, adv, phase in phase_triples(two_sets):
        eps = int(row["eps"])
        assert int(np.abs(phase).max()) <= eps
        assert spectrum_error(adv, phase) < tolerance[eps], (row["file"], spectrum_error(adv, phase))
        rng = np.random.default_rng(int(row["stimulus_id"][:8], 16))
        noise = np.clip(clean + eps * rng.choice([-1, 1], size=clean.shape), 0, 255) - clean
        assert spectrum_error(adv, noise) > 1.0
        r = np.corrcoef(adv.ravel(), phase.ravel())[0, 1]
        assert abs(r) < 0.05, (row["file"], r)  # 150,528 values: |r| of independent ones is about 0.003
        seen[eps] += 1
    assert seen == {4: 32, 16: 32}


def test_phase_randomisation_is_exact_before_rounding() -> None:
    from stimuli.controls import phase_randomise

    rng = np.random.default_rng(5)
    delta = np.cumsum(rng.normal(size=(3, 32, 48)), axis=2)  # structured, not white
    out = phase_randomise(delta, 8, seed=1)
    assert out.shape == delta.shape and out.dtype == np.float64
    assert math.isclose(float(np.abs(out).max()), 8.0)
    assert spectrum_error(delta, out) < 1e-9
    spectrum = np.fft.fft2(out, axes=(-2, -1))  # real output: the spectrum is Hermitian-symmetric
    mirrored = np.conj(np.roll(np.flip(spectrum, axis=(-2, -1)), 1, axis=(-2, -1)))
    assert np.allclose(spectrum, mirrored)
    assert np.array_equal(phase_randomise(delta, 8, seed=1), out)
    assert not np.allclose(phase_randomise(delta, 8, seed=2), out)
    assert not np.any(phase_randomise(np.zeros((3, 8, 8)), 4, seed=0))


def test_model_set_options_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cases = [
        (["--model-set", "A=lite0", "--models", "lite1"], "not both"),
        (["--model-set", "A"], "not of the form NAME=M1"),
        (["--model-set", "A:x=lite0"], "is not a model-set name"),
        (["--model-set", "A=lite0", "--model-set", "A=lite1"], "the name A is given twice"),
        (["--model-set", "A=lite0", "--model-set", "B=lite0"], "attack the same models"),
        (["--model-set", "A=lite0", "--holdout", "lite0"], "also attacked"),
    ]
    base = ["stimuli", "generate", "--images", "builtin", "--pairs", "cat:truck", "--eps", "4", "--limit", "1"]
    for extra, message in cases:
        out = tmp_path / "never"
        assert cli_main([*base, *extra, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not out.exists()


def test_observers_form_a_transfer_matrix_and_the_report_draws_it(two_sets: Path, tmp_path: Path) -> None:
    import shutil

    from advbias.observers import read

    setdir = tmp_path / "set"
    shutil.copytree(two_sets, setdir)
    assert cli_main(["stimuli", "observe", str(setdir), "--models", "lite0,lite2", "--no-progress"]) == 0
    rows = read(setdir)
    cells = {(r["model_set"], r["model"], r["condition"], r["eps"]): r for r in rows}
    assert {(s, m) for s, m, _, _ in cells} == {(s, m) for s in "AB" for m in ("lite0", "lite2")}
    assert {c for _, _, c, _ in cells} == {"targets", "vs_clean", "vs_phase"}
    assert cells[("A", "lite0", "targets", 16)]["role"] == "attacked"
    assert cells[("B", "lite0", "targets", 16)]["role"] == "other"
    assert cells[("B", "lite2", "targets", 16)]["role"] == "held_out"
    assert all(r["n_judgments"] == 16 for r in rows)  # 8 photos x 2 asked categories per set and budget
    # lite0 is the ceiling on the images made on it, and sees less in lite1's
    assert cells[("A", "lite0", "targets", 16)]["bias"] >= cells[("B", "lite0", "targets", 16)]["bias"]
    assert cli_main(["stimuli", "report", str(setdir)]) == 0
    page = (setdir / "report.html").read_text()
    assert "transfer matrix: model set x observer" in page and "model sets" in page


# --------------------------------------------------------------------------- the study


class ByModelSet:
    """Chooses the image perturbed toward the asked category with a probability that depends on its model set."""

    def __init__(self, setdir: Path, client: Any, truth: dict[str, float], seed: int) -> None:
        from analysis.participants import load_stimuli, pixel_index

        self.stimuli = load_stimuli(setdir)
        self.by_pixels = pixel_index(setdir, self.stimuli)
        self.client, self.truth = client, truth
        self.rng = np.random.default_rng(seed)

    def __call__(self, trial: dict[str, Any]) -> tuple[str, float]:
        from analysis.participants import classify, pixel_key

        named = {**trial, **{side: self.by_pixels[pixel_key(self.client.fetch(trial[side]))]
                             for side in ("left", "right")}}
        _kind, condition, target_side, _eps, _source = classify(named, self.stimuli)
        p = 1.0 if condition == "catch" else self.truth[self.stimuli[named[target_side]].model_set]
        chose = self.rng.random() < p
        return (target_side if chose else ("right" if target_side == "left" else "left")), 900.0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_study_over_two_model_sets_end_to_end(two_sets: Path, app: Any, app_server: str, tmp_path: Path) -> None:
    import pandas as pd

    from advbias.client import HttpClient, Participant
    from experiment.export import write_export
    from experiment.study import create_experiment

    state = app.extensions["advbias"]
    config = {"conditions": ["targets", "vs_phase"], "budgets": [16], "model_sets": ["A", "B"],
              "practice_trials": 0, "catch_trials": 0, "require_prolific_pid": False}
    _exp, design, created = create_experiment(state.db, "two-sets", two_sets, config, state.store)
    assert created and design.summary()["model_sets"] == ["A", "B"] and len(design.cells) == 8
    truth = {"A": 0.85, "B": 0.35}  # far apart, yet A not chosen every time (which separates the GLMM)
    rounds = 3  # complete rounds of lists: one round (16 people, 2 "targets" trials per set each) leaves the paired
    #             test's p near 0.01 in about a third of runs; three put it well below
    for i in range(rounds * design.n_lists):
        client = HttpClient(app_server, timeout=30.0)
        try:
            Participant("two-sets", f"p{i:03d}", choose=ByModelSet(two_sets, client, truth, seed=i)).run(client)
        finally:
            client.close()
    export = tmp_path / "export.csv"
    assert write_export(state.db, "two-sets", export) == rounds * design.n_lists * 8
    df = pd.read_csv(export, keep_default_na=False)
    assert set(df["model_set"]) == {"A", "B"}
    main = df[df["kind"] == "main"]
    # every participant sees each set equally often, and each photo at most once over both sets
    assert (main.groupby(["participant", "model_set"]).size() == 4).all()
    assert (main.groupby(["participant", "source"]).size() == 1).all()
    # over the round of lists each photo is shown on each set equally often, the target on each side too
    assert main.groupby(["source", "model_set"]).size().nunique() == 1
    assert main.groupby(["model_set", "target_side"]).size().nunique() == 1

    analysis_config = tmp_path / "analysis.toml"  # participants answer as fast as the server replies
    analysis_config.write_text("[exclusions]\nmin_median_server_rt_ms = 0\nmax_rt_over_server_fraction = 1\n")
    out = tmp_path / "results"
    assert cli_main(["analyze", str(export), "--out", str(out), "--config", str(analysis_config), "--quiet"]) == 0
    by_set = pd.read_csv(out / "bias_by_model_set.csv", keep_default_na=False)
    assert set(zip(by_set["condition"], by_set["model_set"], by_set["eps"])) == {
        (c, s, 16) for c in ("targets", "vs_phase") for s in "AB"}
    bias = {(r.condition, r.model_set): r.bias for r in by_set.itertuples()}
    assert bias[("targets", "A")] > bias[("targets", "B")]
    contrasts = pd.read_csv(out / "model_set_contrasts.csv", keep_default_na=False)
    pooled = contrasts[(contrasts["eps"] == "all") & (contrasts["condition"] == "targets")]
    assert set(pooled["method"]) == {"paired t", "glmm"}
    assert (pooled["model_set"] == "A").all() and (pooled["baseline_model_set"] == "B").all()
    paired = pooled[pooled["method"] == "paired t"].iloc[0]
    assert float(paired["diff"]) > 0 and float(paired["p"]) < 0.01  # 0.85 vs 0.35 over three rounds of lists
    terms = pd.read_csv(out / "mixed_model_by_model_set.csv", keep_default_na=False)
    set_term = terms[(terms["condition"] == "targets") & (terms["term"] == "model_set=B vs A")].iloc[0]
    assert float(set_term["estimate"]) < 0  # B is followed less than A
    assert "Model sets" in (out / "report.md").read_text()


def test_old_manifests_read_as_one_set(tmp_path: Path) -> None:
    from advbias.manifest import read_records

    rows = [{"stimulus_id": "a" * 64, "file": f"images/{'a' * 64}.png", "source": "x.png", "source_sha256": "b" * 64,
             "condition": "clean", "pair": "", "target": "", "eps": "0", "pair_key": "", "ensemble_category": "cat",
             "ensemble_category_prob": "0.9"}]
    from advbias.manifest import COLUMNS

    old = [c for c in COLUMNS if c != "model_set"]
    (tmp_path / "manifest.csv").write_text(",".join(old) + "\n" + ",".join(rows[0].get(c, "") for c in old) + "\n")
    assert read_manifest(tmp_path)[0].model_set == ""
    assert read_records(tmp_path)[0]["model_set"] == ""
