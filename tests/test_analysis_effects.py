"""Contrasts, dose-response, the declared primary analysis, items and the write-up, on simulated exports
whose truth is known (analysis/simulation.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import analysis
from analysis import common, effects, items
from analysis.config import AnalysisConfig
from analysis.glmm import fit_logistic_glmm
from analysis.primary import primary_analysis
from analysis.simulation import conditional_logit, marginal_probability, simulate_export
from advbias.cli import main as advbias

EPS = (2, 4, 8, 16)
SD_P, SD_I = 0.4, 0.3
TOTAL = math.hypot(SD_P, SD_I)
#: A dose-response that is linear in log2(eps) on the subject-specific scale: 0.2 + 0.15 * (log2 eps - 2.5).
SLOPE = 0.15
TREND_BIAS = {e: marginal_probability(0.2 + SLOPE * (math.log2(e) - 2.5), TOTAL) for e in EPS}
NOISE_BIAS = 0.52


@pytest.fixture(scope="module")
def two_types() -> pd.DataFrame:
    df = simulate_export(70, 192, {"targets": TREND_BIAS, "vs_noise": NOISE_BIAS}, SD_P, SD_I, eps=EPS,
                         conditions=("targets", "vs_noise"), n_images=30, seed=8)
    kept, _ = analysis.apply_exclusions(analysis.validate_export(df))
    kept.attrs.update(df.attrs)
    return kept


def test_contrasts_recover_the_truth_within_their_cis(two_types: pd.DataFrame) -> None:
    table = effects.contrasts(two_types)
    assert list(table.columns[:11]) == ["condition", "baseline", "eps", "n_participants", "diff", "ci_low",
                                        "ci_high", "t", "dof", "p", "p_holm"]
    paired = table[table["method"] == "paired t"].set_index("eps")
    assert set(paired["condition"]) == {"targets"} and set(paired["baseline"]) == {"vs_noise"}
    # Paired differences of participant means estimate differences of population-average biases.
    for eps in EPS:
        row = paired.loc[str(eps)]
        assert row.ci_low < TREND_BIAS[eps] - NOISE_BIAS < row.ci_high, (eps, row.diff)
    pooled = paired.loc["all"]
    assert pooled.ci_low < np.mean(list(TREND_BIAS.values())) - NOISE_BIAS < pooled.ci_high
    assert pooled.dz_ci_low < pooled.cohen_dz < pooled.dz_ci_high
    # The GLMM's log-odds differences estimate differences of the subject-specific log-odds.
    glmm = table[table["method"] == "glmm"].set_index("eps")
    beta_noise = conditional_logit(NOISE_BIAS, TOTAL)
    for eps in EPS:
        truth = 0.2 + SLOPE * (math.log2(eps) - 2.5) - beta_noise
        assert glmm.loc[str(eps), "ci_low"] < truth < glmm.loc[str(eps), "ci_high"], eps
    # targets rises with the budget and vs_noise does not: the condition x budget interaction is there.
    assert glmm.loc["interaction", "p"] < 0.01 and glmm.loc["interaction", "chi2_df"] == 3
    # Holm within a pair's budgets matches the textbook step-down.
    from statsmodels.stats.multitest import multipletests

    per_eps = paired.loc[[str(e) for e in EPS]]
    assert np.allclose(per_eps["p_holm"], multipletests(per_eps["p"], method="holm")[1])


def test_paired_contrast_intervals_cover_at_the_nominal_rate() -> None:
    """60 studies with images random: the pooled paired-difference CI covers the true difference in >= 88%."""
    truth = 0.60 - 0.53
    covered = 0
    config = AnalysisConfig(mixed_model=False)
    for seed in range(60):
        df = simulate_export(30, 48, {"targets": 0.60, "vs_flip": 0.53}, 0.4, 0.3, eps=(8,),
                             conditions=("targets", "vs_flip"), n_images=24, n_catch=0, seed=300 + seed)
        row = effects.contrasts(analysis.validate_export(df), config).query("eps == 'all'").iloc[0]
        covered += row.ci_low < truth < row.ci_high
    assert covered / 60 >= 0.88, covered


def test_trend_recovers_the_slope_per_doubling(two_types: pd.DataFrame) -> None:
    table = effects.trend(two_types)
    assert list(table.columns[:6]) == ["condition", "slope", "ci_low", "ci_high", "z", "p"]
    rows = table.set_index("condition")
    assert rows.loc["targets", "ci_low"] < SLOPE < rows.loc["targets", "ci_high"]
    assert rows.loc["targets", "p"] < 0.001
    assert rows.loc["vs_noise", "ci_low"] < 0 < rows.loc["vs_noise", "ci_high"]
    means = analysis.bias_by_eps(two_types).query("condition == 'targets'")["bias"].to_numpy()
    assert rows.loc["targets", "monotone"] == bool(np.all(np.diff(means) >= 0))
    assert rows.loc["targets", "model"] == "random intercepts"


def test_random_slope_is_recovered_and_falls_back_when_absent(two_types: pd.DataFrame) -> None:
    rng = np.random.default_rng(4)
    n, x_levels = 150, np.array([-1.5, -0.5, 0.5, 1.5])
    u, s = rng.normal(0, 0.4, n), rng.normal(0, 0.35, n)
    participant = np.repeat(np.arange(n), len(x_levels))
    x = np.tile(x_levels, n)
    trials = np.full(len(x), 40.0)
    y = rng.binomial(40, 1 / (1 + np.exp(-(0.2 + 0.3 * x + u[participant] + s[participant] * x)))).astype(float)
    X = np.stack([np.ones_like(x), x], axis=1)
    fit = fit_logistic_glmm(y, X, {"participant": participant}, ["(Intercept)", "x"], trials=trials,
                            slopes={"participant": x})
    assert fit.sd["participant:slope"] == pytest.approx(0.35, abs=0.1)
    assert fit.sd["participant"] == pytest.approx(0.4, abs=0.1)
    row = fit.summary()[1]
    assert row["ci_low"] < 0.3 < row["ci_high"]
    # The simulated study has no slope variation: the fit says so and the intercept-only model is reported.
    table = effects.trend(two_types, AnalysisConfig(random_slope=True)).set_index("condition")
    for condition in ("targets", "vs_noise"):
        row = table.loc[condition]
        if row["model"] == "random intercepts":
            assert "random slope not estimable" in row["note"]
        else:
            assert row["sd_slope"] > 0 and row["ci_low"] < row["slope"] < row["ci_high"]


def test_cohens_d_interval_inverts_the_noncentral_t_and_covers() -> None:
    low, high = common.cohen_d_ci(3.0, 20)
    assert sps.nct.cdf(3.0, 19, low * math.sqrt(20)) == pytest.approx(0.975, abs=1e-8)
    assert sps.nct.cdf(3.0, 19, high * math.sqrt(20)) == pytest.approx(0.025, abs=1e-8)
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(300):
        values = rng.normal(0.5, 1.0, 15)
        t = values.mean() / (values.std(ddof=1) / math.sqrt(15))
        lo, hi = common.cohen_d_ci(t, 15)
        covered += lo < 0.5 < hi
    assert 0.92 <= covered / 300 <= 0.98
    table = analysis.bias_by_eps(analysis.validate_export(simulate_export(30, 40, 0.6, eps=(8,), seed=3)))
    assert (table["cohen_d_ci_low"] < table["cohen_d"]).all() and (table["cohen_d"] < table["cohen_d_ci_high"]).all()


def test_primary_family_holm_and_one_sided(two_types: pd.DataFrame) -> None:
    tables = analysis.analyze(two_types, AnalysisConfig(n_boot=0))
    primary = tables["primary"].set_index("condition")
    assert list(primary.index) == ["targets", "vs_noise"]
    assert primary["test"].str.startswith("GLMM").all()
    intercept = tables["mixed_model"].query("model == 'intercept' and effect == 'fixed'").set_index("condition")
    assert np.allclose(primary["estimate"], intercept["estimate"]) and np.allclose(primary["statistic"], intercept["z"])
    # The Wald statistic on a t reference with (fewer of participants and images) - 1 degrees of freedom.
    dof = np.minimum(intercept["n_participants"], intercept["n_images"]) - 1
    assert np.allclose(primary["dof"], dof)
    assert np.allclose(primary["p"], 2 * sps.t.sf(np.abs(intercept["z"]), dof))
    assert (primary["p"] > intercept["p"]).all()
    from statsmodels.stats.multitest import multipletests

    assert np.allclose(primary["p_holm"], multipletests(primary["p"], method="holm")[1])
    one_sided = primary_analysis(tables, AnalysisConfig(alternative="greater")).set_index("condition")
    for condition in primary.index:
        expected = primary.loc[condition, "p"] / 2 if primary.loc[condition, "estimate"] > 0 else \
            1 - primary.loc[condition, "p"] / 2
        assert one_sided.loc[condition, "p"] == pytest.approx(expected, rel=1e-9)
        assert one_sided.loc[condition, "ci_high"] == math.inf
    ttest = primary_analysis(tables, AnalysisConfig(primary="ttest")).set_index("condition")
    by_condition = tables["bias_by_condition"].set_index("condition")
    assert np.allclose(ttest["p"], by_condition["p"]) and np.allclose(ttest["bias"], by_condition["bias"])


def test_items_categories_and_halves(two_types: pd.DataFrame) -> None:
    main = two_types[two_types["kind"] == "main"]
    by_image = items.bias_by_image(two_types)
    assert list(by_image.columns) == list(items.IMAGE_COLUMNS)
    assert by_image["n_trials"].sum() == len(main)
    assert ((by_image["ci_low"] <= by_image["bias"]) & (by_image["bias"] <= by_image["ci_high"])).all()
    # Per image, over budgets, the bias follows the image's drawn effect (the item-level truth).
    pooled = main.groupby("source")["chose_question_target"].mean()
    effect = pd.Series(two_types.attrs["image_effects"]).reindex(pooled.index)
    assert sps.spearmanr(pooled, effect).statistic > 0.3

    by_category = items.bias_by_category(two_types).set_index(["condition", "question_target"])
    means = (main[main["condition"] == "targets"].groupby(["participant", "question_target"])
             ["chose_question_target"].mean().unstack())
    assert by_category.loc[("targets", "dog - cat"), "bias"] == pytest.approx((means["dog"] - means["cat"]).mean())
    assert by_category.loc[("targets", "dog - cat"), "p"] > 0.001  # no asymmetry was simulated

    halves = two_types.copy()
    late = halves["trial_index"] >= halves.groupby("participant")["trial_index"].transform("median")
    halves.loc[late & (halves["kind"] == "main"), "chose_question_target"] = 1
    table = items.bias_by_half(halves).set_index(["condition", "half"])
    assert table.loc[("targets", "second - first"), "bias"] > 0.3 and table.loc[("targets", "second - first"), "p"] < 1e-6


def test_methods_and_results_from_set_json(two_types: pd.DataFrame, tmp_path: Path) -> None:
    frame = two_types.copy()
    frame.attrs.clear()
    export = tmp_path / "export.csv"
    frame.to_csv(export, index=False)
    setdir = tmp_path / "set"
    setdir.mkdir()
    (setdir / "set.json").write_text(json.dumps({
        "format": "advbias-stimulus-set/1",
        "parameters": {"pairs": ["cat:dog"], "eps": list(EPS), "steps": 100, "size": 224, "controls": ["noise"],
                       "models": ["lite0", "lite1"], "holdout": ["lite2"]},
        "attack": {"loss": "logit", "momentum": 1.0, "input_diversity": 0.7},
        "models": [{"name": "lite0"}, {"name": "lite1"}], "holdout_models": [{"name": "lite2"}],
        "counts": {"sources": 30}}))
    out = tmp_path / "report"
    assert advbias(["analyze", str(export), "--out", str(out), "--set", str(setdir), "--quiet"]) == 0
    text = (out / "report.md").read_text()
    methods = text.split("### Methods")[1].split("### Results")[0]
    assert "30 photographs" in methods and "cat and dog" in methods and "100 steps, logit loss" in methods
    assert "lite0 and lite1" in methods and "lite2 was held out" in methods and "2/255, 4/255, 8/255 and 16/255" in methods
    participants = pd.read_csv(out / "participants.csv")
    assert f"{len(participants)} participants took part and {int((~participants['excluded']).sum())} were analysed" \
        in methods
    results = text.split("### Results")[1].split("## Exclusions")[0]
    primary = pd.read_csv(out / "primary.csv").set_index("condition")
    assert f"mixed model log-odds {primary.loc['targets', 'estimate']:.3f}" in results
    trend = pd.read_csv(out / "trend.csv").set_index("condition")
    assert f"{trend.loc['targets', 'slope']:+.3f} log-odds per doubling" in results
    # Without --set the paragraph says what is missing instead of guessing.
    plain = tmp_path / "plain"
    assert advbias(["analyze", str(export), "--out", str(plain), "--quiet"]) == 0
    assert "set.json was not given" in (plain / "report.md").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert advbias(["analyze", str(export), "--out", str(plain), "--set", str(bad), "--quiet"]) == 2


def test_power_for_the_trend_and_a_contrast(capsys: pytest.CaptureFixture[str]) -> None:
    assert advbias(["power", "--test", "trend", "--bias", "2:0.52,4:0.54,8:0.57,16:0.6", "--trials", "40",
                    "--sims", "200", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "dose-response" in out and "simulation (trend, 200 runs per size)" in out
    n_trend = int(out.split("runs per size): ")[1].split(" participants")[0])
    assert advbias(["power", "--test", "contrast", "--bias", "0.58", "--baseline-bias", "0.53", "--trials", "80",
                    "--sims", "200", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "contrast condition minus baseline" in out
    result = analysis.power.design_power("contrast", {"a": 0.58, "b": 0.53}, 80, sims=200, seed=1)
    assert abs(result.n_simulation - result.n_analytic) <= max(3, 0.2 * result.n_analytic)
    assert 0.02 <= result.false_positive_rate <= 0.09 and n_trend > 3
    assert advbias(["power", "--test", "trend", "--bias", "0.55", "--trials", "40", "--quiet"]) == 2
    assert "a bias per budget" in capsys.readouterr().err
    assert advbias(["power", "--test", "contrast", "--bias", "0.55", "--trials", "40", "--quiet"]) == 2
    assert "--baseline-bias" in capsys.readouterr().err
