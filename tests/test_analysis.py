"""The analysis stage on simulated exports with a known truth, through the Python API and the CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import analysis
from analysis import bias, common, stats
from analysis.config import AnalysisConfig, ExclusionRules, load_config
from analysis.data import EXPORT_COLUMNS, load_export
from analysis.simulation import (conditional_logit, marginal_probability, parse_bias, simulate_export,
                                 simulate_trials)
from advbias.cli import main as advbias


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def study() -> pd.DataFrame:
    """60 participants (a fifth of them misbehaving), two conditions, two budgets."""
    return simulate_export(
        60, 120, bias={"targets": {4: 0.53, 16: 0.62}, "vs_clean": 0.5}, participant_sd=0.3, image_sd=0.0,
        eps=(4, 16), conditions=("targets", "vs_clean"), n_images=30, n_catch=12, inattentive=0.08,
        incomplete=0.06, distracted=0.06, seed=11,
    )


@pytest.fixture(scope="module")
def export_files(study: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("export")
    frame = study.copy()
    frame.attrs.clear()
    paths = {"csv": folder / "study.csv", "parquet": folder / "study.parquet"}
    frame.to_csv(paths["csv"], index=False)
    frame.to_parquet(paths["parquet"], index=False)
    return paths


# --------------------------------------------------------------------------- reading exports
def test_simulated_export_has_the_documented_columns(study: pd.DataFrame) -> None:
    assert list(study.columns) == list(EXPORT_COLUMNS)
    documented = Path(__file__).resolve().parents[1] / "docs" / "export.md"
    for column in EXPORT_COLUMNS:
        assert f"`{column}`" in documented.read_text(), column
    assert set(study["kind"]) == {"practice", "main", "catch"}
    assert set(study.loc[study["kind"] == "catch", "condition"]) == {"catch"}


def test_export_columns_match_the_experiment_stage() -> None:
    from experiment.export import COLUMNS

    assert EXPORT_COLUMNS == COLUMNS


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_load_export_round_trip(export_files: dict[str, Path], study: pd.DataFrame, fmt: str) -> None:
    df = load_export(export_files[fmt])
    assert len(df) == len(study)
    assert df["chose_question_target"].dtype == np.int64
    assert df["eps"].dtype == np.int64
    assert df["rt_ms"].dtype == np.float64
    # Identifiers keep their exact text.
    assert df["participant"].tolist() == study["participant"].tolist()
    assert (df["chose_question_target"].to_numpy() == study["chose_question_target"].to_numpy()).all()


def test_load_export_keeps_ids_that_look_like_numbers(tmp_path: Path, study: pd.DataFrame) -> None:
    frame = study.head(30).copy()
    frame.attrs.clear()
    frame["participant"] = "0012"
    frame["trial_index"] = range(len(frame))
    frame["participant_status"] = "completed"
    frame.to_csv(tmp_path / "x.csv", index=False)
    assert set(load_export(tmp_path / "x.csv")["participant"]) == {"0012"}


def _bad_files(tmp_path: Path, study: pd.DataFrame) -> dict[str, tuple[Path, str]]:
    frame = study.head(50).copy()
    frame.attrs.clear()
    missing = tmp_path / "missing.csv"
    frame.drop(columns=["chose_question_target", "rt_ms"]).to_csv(missing, index=False)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    header = tmp_path / "header.csv"
    frame.head(0).to_csv(header, index=False)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("stimulus_id,file,source,condition,eps\nabc,images/abc.png,cat.jpg,clean,0\n")
    binary = tmp_path / "image.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    bad_value = tmp_path / "bad_value.csv"
    frame.assign(chose_question_target=frame["chose_question_target"].astype(str).replace("1", "yes")).to_csv(
        bad_value, index=False)
    bad_parquet = tmp_path / "broken.parquet"
    bad_parquet.write_bytes(b"PAR1 this is not parquet")
    return {
        "missing columns": (missing, "missing column(s) chose_question_target, rt_ms"),
        "empty file": (empty, "is empty"),
        "header only": (header, "no trials"),
        "manifest, not an export": (manifest, "not a trial export"),
        "binary": (binary, "not"),
        "bad value": (bad_value, "must be 0/1"),
        "broken parquet": (bad_parquet, "cannot be read as Parquet"),
    }


def test_bad_exports_raise_one_clear_value_error(tmp_path: Path, study: pd.DataFrame) -> None:
    for name, (path, message) in _bad_files(tmp_path, study).items():
        with pytest.raises(ValueError) as info:
            load_export(path)
        assert message in str(info.value), name
        assert str(path) in str(info.value) or path.name in str(info.value), name


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, study: pd.DataFrame,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for name, (path, message) in _bad_files(tmp_path, study).items():
        status = advbias(["analyze", str(path), "--out", str(tmp_path / "out"), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert status == 2, name
        assert err.startswith("advbias: error:") and "\n" not in err, (name, err)
        assert message in err, (name, err)
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert advbias(["analyze", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "out")]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_process_exit_status_for_empty_export(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    result = subprocess.run([sys.executable, "-m", "advbias", "analyze", str(empty), "--out",
                             str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"advbias: error: {empty} is empty: not a trial export"]


def test_cli_module_does_not_import_heavy_libraries() -> None:
    code = ("import sys, argparse; import analysis.cli as c; p = argparse.ArgumentParser(); "
            "c.register(p.add_subparsers()); "
            "print(sorted(m for m in ('pandas', 'scipy', 'statsmodels', 'pingouin', 'matplotlib', 'requests') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- exclusions
def test_exclusions_find_exactly_the_misbehaving_participants(study: pd.DataFrame) -> None:
    df = load_export_from_frame(study)
    kept, excluded = analysis.apply_exclusions(df)
    roles = study.attrs["participant_roles"]
    status = study.drop_duplicates("participant").set_index("participant")["participant_status"]
    expected = {p for p, role in roles.items() if role != "attentive"} | set(status[status != "completed"].index)
    assert set(excluded["participant"]) == expected
    assert list(excluded.columns) == list(stats.EXCLUSION_COLUMNS)
    reasons = excluded.set_index("participant")["reason"]
    for participant in expected:
        if status[participant] != "completed":
            assert "incomplete" in reasons[participant]
        elif roles[participant] == "inattentive":
            assert "catch_accuracy" in reasons[participant] or "fast_responses" in reasons[participant]
        else:
            assert "left_fullscreen" in reasons[participant] or "blurred" in reasons[participant]
    assert set(kept["participant"]).isdisjoint(expected)
    assert "practice" not in set(kept["kind"])
    assert (kept.loc[kept["kind"] == "main", "rt_ms"] >= 150).all()


def test_exclusion_rules_are_configurable(study: pd.DataFrame, tmp_path: Path) -> None:
    df = load_export_from_frame(study)
    loose = tmp_path / "loose.toml"
    loose.write_text("[exclusions]\nmin_catch_accuracy = 0\nmin_rt_ms = 0\nrequire_completed = false\n"
                     "max_not_fullscreen_fraction = 1\nmax_blurred_fraction = 1\n")
    kept, excluded = analysis.apply_exclusions(df, load_config(loose))
    assert excluded.empty
    assert kept["participant"].nunique() == study["participant"].nunique()
    strict = AnalysisConfig(exclusions=ExclusionRules(min_catch_accuracy=1.0))
    _, excluded_strict = analysis.apply_exclusions(df, strict)
    assert len(excluded_strict) > len(analysis.apply_exclusions(df)[1])


def test_practice_trials_never_count(study: pd.DataFrame) -> None:
    df = load_export_from_frame(study)
    spoiled = df.copy()
    practice = spoiled["kind"] == "practice"
    spoiled.loc[practice, "chose_question_target"] = 0
    spoiled.loc[practice, "rt_ms"] = 10.0
    spoiled.loc[practice, "fullscreen"] = 0
    a = analysis.bias_by_eps(analysis.apply_exclusions(df)[0])
    b = analysis.bias_by_eps(analysis.apply_exclusions(spoiled)[0])
    pd.testing.assert_frame_equal(a, b)


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    typo = tmp_path / "typo.toml"
    typo.write_text("[exclusions]\nmin_catch_acuracy = 0.8\n")
    with pytest.raises(ValueError, match="unknown setting \\[exclusions\\] min_catch_acuracy"):
        load_config(typo)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[analysis]\nalpha = 'high'\n")
    with pytest.raises(ValueError, match="alpha must be a number"):
        load_config(wrong)
    out_of_range = tmp_path / "range.toml"
    out_of_range.write_text("[exclusions]\nmin_catch_accuracy = 80\n")
    with pytest.raises(ValueError, match="between 0 and 1"):
        load_config(out_of_range)


def load_export_from_frame(frame: pd.DataFrame) -> pd.DataFrame:
    from analysis.data import validate_export

    return validate_export(frame)


# --------------------------------------------------------------------------- bias and tests
def test_bias_recovers_the_truth_within_its_ci(study: pd.DataFrame) -> None:
    kept, _ = analysis.apply_exclusions(load_export_from_frame(study))
    table = analysis.bias_by_eps(kept)
    assert list(table.columns[:13]) == list(stats.BIAS_BY_EPS_COLUMNS)
    truth = study.attrs["truth"]["bias"]
    for row in table.itertuples(index=False):
        true = truth[f"{row.condition}:{row.eps}"]
        assert row.ci_low < true < row.ci_high, (row.condition, row.eps, row.bias, true)
        assert row.boot_ci_low < true < row.boot_ci_high
        assert row.ci_low < row.bias < row.ci_high
    strong = table[(table["condition"] == "targets") & (table["eps"] == 16)].iloc[0]
    assert strong.p < 1e-4 and strong.bf10 > 100 and strong.cohen_d > 0.5
    null = table[table["condition"] == "vs_clean"]
    assert (null["p_holm"] > 0.05).all() and (null["bf10"] < 1).all()


def test_ttests_match_scipy_and_pingouin(study: pd.DataFrame) -> None:
    import pingouin as pg

    kept, _ = analysis.apply_exclusions(load_export_from_frame(study))
    means = analysis.participant_means(kept)
    table = analysis.ttests(kept)
    for row in table.itertuples(index=False):
        values = means[(means["condition"] == row.condition) & (means["eps"] == row.eps)]["bias"].to_numpy()
        ref = sps.ttest_1samp(values, 0.5)
        assert row.t == pytest.approx(ref.statistic, rel=1e-9)
        assert row.p == pytest.approx(ref.pvalue, rel=1e-9)
        assert row.dof == len(values) - 1
        assert row.bf10 == pytest.approx(pg.bayesfactor_ttest(ref.statistic, len(values)), rel=1e-9)
        assert row.cohen_d == pytest.approx((values.mean() - 0.5) / values.std(ddof=1))
        assert row.wilcoxon_p == pytest.approx(sps.wilcoxon(values - 0.5).pvalue, rel=1e-9)
    # Holm within each condition, across budgets.
    from statsmodels.stats.multitest import multipletests

    for _, group in table.groupby("condition"):
        assert np.allclose(group["p_holm"], multipletests(group["p"], method="holm")[1])


def test_ci_coverage_is_about_95_percent() -> None:
    """400 simulated studies, one cell: the t-CI covers the truth in [0.92, 0.975] of them.

    With images fixed (image SD 0) the truth is the population-average bias. The
    binomial SD of a 95% coverage estimate from 400 runs is 0.011; the interval
    allows -2.7 / +2.3 SDs. The bootstrap percentile interval is known to be a
    little narrow at n = 25; it must land in [0.90, 0.975].
    """
    rng = np.random.default_rng(5)
    truth, covered, covered_boot, runs = 0.56, 0, 0, 400
    for seed in range(runs):
        sim = simulate_trials(25, 40, truth, participant_sd=0.4, image_sd=0.0, eps=(8,), n_catch=0,
                              n_practice=0, seed=1000 + seed)
        main = sim.kind == 1
        means = np.bincount(sim.participant[main], sim.correct[main]) / np.bincount(sim.participant[main])
        _, _, low, high = common.t_interval(means, 0.95)
        covered += low < truth < high
        boot_low, boot_high = bias._bootstrap_ci(means, 0.95, 1000, rng)
        covered_boot += boot_low < truth < boot_high
    assert 0.92 <= covered / runs <= 0.975, covered / runs
    assert 0.90 <= covered_boot / runs <= 0.975, covered_boot / runs


def test_null_bias_gives_uniform_p_values() -> None:
    """300 studies with no bias: the t-test rejects at 5% in [0.025, 0.08] and the p-values pass a KS test."""
    p_values, wilcoxon = [], []
    for seed in range(300):
        sim = simulate_trials(20, 40, 0.5, participant_sd=0.3, image_sd=0.0, eps=(8,), n_catch=0,
                              n_practice=0, seed=5000 + seed)
        main = sim.kind == 1
        means = np.bincount(sim.participant[main], sim.correct[main]) / np.bincount(sim.participant[main])
        result = stats.one_sample_tests(means, 0.5)
        p_values.append(result["p"])
        wilcoxon.append(result["wilcoxon_p"])
    p_values = np.array(p_values)
    assert 0.025 <= np.mean(p_values < 0.05) <= 0.08
    assert sps.kstest(p_values, "uniform").pvalue > 0.01
    assert np.mean(np.array(wilcoxon) < 0.05) <= 0.08


def test_side_bias_is_detected() -> None:
    leaning = load_export_from_frame(simulate_export(40, 80, 0.55, side_bias=0.6, eps=(8,), seed=2))
    table = analysis.side_bias(leaning)
    row = table[table["condition"] == "all"].iloc[0]
    assert row.p_left > 0.55 and row.p < 0.001
    # The counterbalanced target side keeps the bias estimate honest despite the side preference.
    assert leaning[leaning["kind"] == "main"].groupby("target_side")["response"].apply(
        lambda r: (r == "left").mean()).loc["right"] > 0.5


def test_parse_bias() -> None:
    assert parse_bias("0.55") == 0.55
    assert parse_bias("2:0.52,4:0.55") == {2: 0.52, 4: 0.55}
    with pytest.raises(ValueError, match="--bias"):
        parse_bias("1.5")
    with pytest.raises(ValueError, match="--bias"):
        parse_bias("2:x")


def test_conditional_logit_inverts_the_marginal_probability() -> None:
    for bias, sd in [(0.55, 0.0), (0.55, 0.8), (0.3, 1.5)]:
        beta = conditional_logit(bias, sd)
        assert marginal_probability(beta, sd) == pytest.approx(bias, abs=1e-10)
        assert abs(beta) >= abs(math.log(bias / (1 - bias))) - 1e-12


# --------------------------------------------------------------------------- the whole analysis
def test_run_analysis_writes_every_output(export_files: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "analysis.toml"
    config.write_text("[analysis]\nn_boot = 500\nseed = 3\n")
    out = tmp_path / "report"
    status = advbias(["analyze", str(export_files["parquet"]), "--out", str(out), "--config", str(config),
                      "--quiet"])
    assert status == 0
    for name in ("report.html", "report.md", "bias_by_eps.csv", "mixed_model.csv", "exclusions.csv",
                 "bias_by_condition.csv", "participant_bias.csv", "participants.csv", "side_bias.csv",
                 "rt_by_eps.csv", "mixed_model_fits.csv", "exclusion_counts.csv", "provenance.json", "primary.csv",
                 "contrasts.csv", "trend.csv", "bias_by_image.csv", "bias_by_category.csv", "bias_by_half.csv"):
        assert (out / name).stat().st_size > 0, name
    for figure in ("bias_by_eps", "participant_bias", "rt_by_eps", "bias_by_image"):
        assert (out / "figures" / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (out / "figures" / f"{figure}.svg").read_bytes()[:2000]
    bias = pd.read_csv(out / "bias_by_eps.csv")
    assert list(bias.columns[:13]) == list(stats.BIAS_BY_EPS_COLUMNS)
    mixed = pd.read_csv(out / "mixed_model.csv")
    assert list(mixed.columns[3:10]) == list(stats.MIXED_MODEL_COLUMNS)
    assert {"(Intercept)", "eps=4", "eps=16", "sd(participant)", "sd(source)"} <= set(mixed["term"])
    exclusions = pd.read_csv(out / "exclusions.csv")
    assert list(exclusions.columns) == list(stats.EXCLUSION_COLUMNS)
    assert (exclusions["reason"].str.len() > 0).all()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4  # self-contained
    # The declared primary analysis comes first, then the paste-ready Methods and Results.
    assert html.index("Primary analysis") < html.index("Summary") < html.index("Methods and Results")
    assert "<script" not in html and "http://" not in html and "https://" not in html
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["settings"]["n_boot"] == 500
    assert len(provenance["input_sha256"]) == 64
    # Same input and settings: the same numbers (seeded bootstrap).
    again = tmp_path / "again"
    assert advbias(["analyze", str(export_files["csv"]), "--out", str(again), "--config", str(config),
                    "--quiet"]) == 0
    pd.testing.assert_frame_equal(bias, pd.read_csv(again / "bias_by_eps.csv"))


def test_simulate_export_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim.csv"
    assert advbias(["simulate-export", str(out), "--participants", "5", "--trials", "16", "--eps", "2,8"]) == 0
    df = load_export(out)
    assert df["participant"].nunique() == 5
    assert sorted(df.loc[df["kind"] == "main", "eps"].unique()) == [2, 8]
    assert advbias(["simulate-export", str(tmp_path / "sim.txt"), "--participants", "5"]) == 2
    assert "must end in .csv or .parquet" in capsys.readouterr().err


# --------------------------------------------------------------------------- power
def test_power_simulation_agrees_with_the_analytic_t_test_when_images_are_fixed() -> None:
    result = analysis.power_analysis(0.55, 60, participant_sd=0.3, image_sd=0.0, sims=400, seed=1)
    assert result.n_analytic is not None and result.n_simulation is not None
    assert abs(result.n_simulation - result.n_analytic) <= max(3, 0.15 * result.n_analytic)
    assert result.power_at_n >= 0.8
    assert 0.02 <= result.false_positive_rate <= 0.08
    below = result.curve[result.curve["n_participants"] < result.n_simulation]
    assert (below["power"] < 0.8).all()


def test_power_fast_path_matches_the_full_simulator() -> None:
    """The batch generator behind `advbias power` draws participant means like simulate_trials."""
    from analysis.power import batch_counts

    beta = conditional_logit(0.56, math.hypot(0.5, 0.4))
    successes, _ = batch_counts(np.random.default_rng(0), 40, 200, 60, beta, 0.5, 0.4, 30)
    fast = successes.sum(-1) / 60
    full = []
    for seed in range(40):
        sim = simulate_trials(200, 60, 0.56, 0.5, 0.4, eps=(8,), n_images=30, n_catch=0, n_practice=0, seed=seed)
        full.append(np.bincount(sim.participant, sim.correct) / 60)
    full = np.array(full)
    assert fast.mean() == pytest.approx(full.mean(), abs=0.01)
    assert fast.std(axis=1).mean() == pytest.approx(full.std(axis=1).mean(), rel=0.05)
    assert fast.mean(axis=1).std() == pytest.approx(full.mean(axis=1).std(), rel=0.35)


def test_power_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    curve = tmp_path / "curve.csv"
    assert advbias(["power", "--bias", "0.6", "--trials", "40", "--sims", "200", "--image-sd", "0",
                    "--quiet", "--curve", str(curve)]) == 0
    out = capsys.readouterr().out
    assert "analytic one-sample t-test" in out and "simulation (glmm" in out  # the declared primary test
    assert set(pd.read_csv(curve).columns) == {"n_participants", "power", "mc_se"}
    with pytest.raises(SystemExit):
        advbias(["power", "--bias", "1.2", "--trials", "40"])
    assert "strictly between 0 and 1" in capsys.readouterr().err
    assert advbias(["power", "--bias", "0.5", "--trials", "40", "--quiet"]) == 2
    assert "no effect" in capsys.readouterr().err


def test_power_from_a_pilot_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pilot = simulate_export(60, 80, 0.56, participant_sd=0.7, image_sd=0.0, eps=(8,), n_images=20, seed=4)
    pilot.attrs.clear()
    path = tmp_path / "pilot.csv"
    pilot.to_csv(path, index=False)
    assert advbias(["power", "--bias", "0.56", "--trials", "80", "--pilot", str(path), "--sims", "200",
                    "--quiet"]) == 0
    captured = capsys.readouterr()
    reported = captured.err.split("participant SD ")[1].split(",")[0]
    assert float(reported) == pytest.approx(0.7, abs=0.2)
    assert "20 images" in captured.err and "20 images" in captured.out
    assert advbias(["power", "--bias", "0.56", "--trials", "80", "--pilot", str(path), "--condition", "vs_flip",
                    "--quiet"]) == 2
    assert "no main trials of condition 'vs_flip'" in capsys.readouterr().err


def test_a_bug_inside_analyze_is_a_traceback_and_an_internal_error(
        export_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A plain ValueError from inside the analysis (as a plotting library raises) is not the user's error."""
    import analysis.run

    def broken_figures(*_args: object, **_kwargs: object) -> None:  # stands in for a library bug
        raise ValueError("x and y must have same first dimension, but have shapes (4,) and (3,)")

    monkeypatch.setattr(analysis.run, "figures_for", broken_figures)
    status = advbias(["analyze", str(export_files["csv"]), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert err[0] == "Traceback (most recent call last):" and any("broken_figures" in line for line in err)
    assert err[-1].startswith("advbias: internal error: ValueError: x and y must have same first dimension")
    assert "bug in advbias" in err[-1] and not any(line.startswith("advbias: error:") for line in err)


def test_the_batched_mixed_model_of_power_agrees_with_the_full_fit() -> None:
    """`advbias power` fits its simulated studies together (analysis.glmm_batch); each study's p must be the one
    the analysis's own mixed model (analysis.glmm, as primary.csv reports it) gives, within a small margin, and
    never clearly smaller (the batched variances are REML-like, so it errs on the conservative side)."""
    from analysis.glmm_batch import primary_p
    from analysis.power import _glmm_p, batch_counts
    from analysis.simulation import conditional_logit

    rng = np.random.default_rng(1)
    for bias in (0.5, 0.55):
        beta = conditional_logit(bias, math.hypot(0.3, 0.3))
        successes, counts = batch_counts(rng, 6, 40, 60, beta, 0.3, 0.3, 12)
        batched = primary_p(successes, counts)
        full = np.array([_glmm_p(successes[i], counts[i]) for i in range(len(counts))])
        assert np.all(np.abs(batched - full) < 0.03), (batched, full)
        assert np.all(batched > full - 0.005), (batched, full)


def test_power_warns_when_the_images_cap_the_power() -> None:
    """Image variance does not shrink with participants: with few images the mixed model's power has a ceiling.
    Near it the recommended size is noise, and the output must say so (and how many images lift it)."""
    from analysis.power import power_analysis, power_ceiling
    from analysis.simulation import conditional_logit

    beta = conditional_logit(0.53, math.hypot(0.3, 0.3))
    ceilings = [power_ceiling(beta, 0.3, n, 0.05) for n in (25, 50, 100, 200)]
    assert ceilings == sorted(ceilings) and 0.8 < ceilings[1] < 0.85 and ceilings[3] > 0.99
    assert power_ceiling(beta, 0.0, 50, 0.05) == 1.0
    capped = power_analysis(0.53, 100, sims=100, test="ttest", n_images=50)
    assert "WARNING: with 50 images" in capped.summary() and "give a ceiling of 0.95" in capped.summary()
    free = power_analysis(0.53, 100, sims=100, test="ttest", n_images=200)
    assert "WARNING" not in free.summary()
