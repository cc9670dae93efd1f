"""The logistic mixed model: against exact integration, against the simple mean, and on known truths."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, special

import analysis
from analysis.data import validate_export
from analysis.glmm import fit_logistic_glmm
from analysis.simulation import marginal_probability, simulate_export, simulate_trials


def _exact_fit(successes: np.ndarray, trials: np.ndarray) -> tuple[float, float, float]:
    """Maximum likelihood of ``logit p = beta + sigma z`` by brute-force integration over z.

    One random intercept per group; the integral is a 4001-point rule on [-10, 10],
    far more accurate than any approximation under test. Returns (beta, sigma,
    standard error of beta from the numerical Hessian).
    """
    z = np.linspace(-10.0, 10.0, 4001)
    log_weight = -0.5 * z ** 2 - 0.5 * math.log(2 * math.pi) + math.log(z[1] - z[0])

    def negative_loglik(beta: float, sigma: float) -> float:
        eta = beta + sigma * z[None, :]
        ll = (successes[:, None] * special.log_expit(eta) + (trials - successes)[:, None] * special.log_expit(-eta)
              + log_weight)
        return -float(np.sum(special.logsumexp(ll, axis=1)))

    best = optimize.minimize(lambda p: negative_loglik(p[0], math.exp(p[1])), [0.0, math.log(0.5)],
                             method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-11, "maxiter": 5000})
    beta, sigma = best.x[0], math.exp(best.x[1])
    h = 1e-4
    x0 = np.array([beta, sigma])
    hessian = np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            ei, ej = np.eye(2)[i] * h, np.eye(2)[j] * h
            hessian[i, j] = (negative_loglik(*(x0 + ei + ej)) - negative_loglik(*(x0 + ei - ej))
                             - negative_loglik(*(x0 - ei + ej)) + negative_loglik(*(x0 - ei - ej))) / (4 * h * h)
    return beta, sigma, math.sqrt(np.linalg.inv(hessian)[0, 0])


def test_laplace_fit_matches_exact_integration() -> None:
    sim = simulate_trials(60, 40, 0.6, participant_sd=0.8, image_sd=0.0, eps=(8,), n_catch=0, n_practice=0, seed=4)
    successes = np.bincount(sim.participant, sim.correct).astype(float)
    trials = np.bincount(sim.participant).astype(float)
    beta, sigma, se = _exact_fit(successes, trials)
    fit = fit_logistic_glmm(sim.correct.astype(float), np.ones((len(sim.correct), 1)),
                            {"participant": sim.participant}, ["(Intercept)"])
    assert fit.converged
    assert fit.beta[0] == pytest.approx(beta, abs=0.005)
    assert fit.sd["participant"] == pytest.approx(sigma, abs=0.02)
    assert fit.std_err[0] == pytest.approx(se, rel=0.03)
    # Aggregated rows (successes out of trials) give the same fit as single trials.
    aggregated = fit_logistic_glmm(successes, np.ones((len(trials), 1)), {"participant": np.arange(len(trials))},
                                   trials=trials)
    assert aggregated.beta[0] == pytest.approx(fit.beta[0], abs=1e-5)
    assert aggregated.deviance == pytest.approx(fit.deviance, abs=1e-4)


def _balanced(participant_sd: float, image_sd: float, seed: int):
    # 60 trials over 20 images: every participant sees every image exactly 3 times.
    sim = simulate_trials(40, 60, 0.58, participant_sd, image_sd, eps=(8,), n_images=20, n_catch=0, n_practice=0,
                          seed=seed)
    counts = np.bincount(sim.participant * 20 + sim.source, minlength=40 * 20)
    assert (counts == 3).all()
    fit = fit_logistic_glmm(sim.correct.astype(float), np.ones((len(sim.correct), 1)),
                            {"participant": sim.participant, "source": sim.source}, ["(Intercept)"])
    return sim, fit


def test_intercept_equals_the_simple_mean_on_balanced_data_without_random_variation() -> None:
    sim, fit = _balanced(0.0, 0.0, seed=3)
    mean = sim.correct.mean()
    assert fit.beta[0] == pytest.approx(math.log(mean / (1 - mean)), abs=0.05 * fit.std_err[0])


def test_intercept_agrees_with_the_simple_mean_on_balanced_data_with_random_effects() -> None:
    """With random intercepts the intercept is subject-specific: larger than logit(mean), and
    averaging it over the fitted random effects gives back the simple mean."""
    sim, fit = _balanced(0.5, 0.3, seed=3)
    mean = sim.correct.mean()
    total_sd = math.hypot(*fit.sd.values())
    assert fit.beta[0] > math.log(mean / (1 - mean))
    assert marginal_probability(fit.beta[0], total_sd) == pytest.approx(mean, abs=0.003)
    assert abs(fit.beta[0] - sim.truth["logit"]["targets:8"]) < 2.5 * fit.std_err[0]


def test_crossed_random_effects_are_recovered() -> None:
    sim = simulate_trials(120, 80, {4: 0.52, 16: 0.62}, participant_sd=0.6, image_sd=0.4, eps=(4, 16),
                          n_images=40, n_catch=0, n_practice=0, seed=8)
    X = np.stack([sim.eps == 4, sim.eps == 16], axis=1).astype(float)
    fit = fit_logistic_glmm(sim.correct.astype(float), X, {"participant": sim.participant, "source": sim.source},
                            ["eps=4", "eps=16"])
    assert fit.converged
    assert fit.sd["participant"] == pytest.approx(0.6, abs=0.12)
    assert fit.sd["source"] == pytest.approx(0.4, abs=0.15)
    # The estimates sit within their CIs of the subject-specific truth for these images.
    shift = float(np.mean(sim.image_effects))
    for row, key in zip(fit.summary(), ("targets:4", "targets:16")):
        assert row["ci_low"] < sim.truth["logit"][key] + shift < row["ci_high"], row
    assert fit.beta[1] - fit.beta[0] == pytest.approx(
        sim.truth["logit"]["targets:16"] - sim.truth["logit"]["targets:4"], abs=0.15)


def test_mixed_model_table_and_fit_details() -> None:
    df = validate_export(simulate_export(50, 80, {"targets": {4: 0.5, 16: 0.64}, "vs_noise": 0.5},
                                         participant_sd=0.4, image_sd=0.3, eps=(4, 16),
                                         conditions=("targets", "vs_noise"), n_images=25, seed=21))
    kept, _ = analysis.apply_exclusions(df)
    table, fits = analysis.mixed_model(kept, fits=True)
    assert set(fits["condition"]) == {"targets", "vs_noise"}
    assert fits["converged"].all()
    fixed = table[table["effect"] == "fixed"].set_index(["condition", "term"])
    strong = fixed.loc[("targets", "eps=16")]
    assert strong["p"] < 1e-4 and strong["odds_ratio"] > 1.3
    assert strong["or_ci_low"] == pytest.approx(math.exp(strong["ci_low"]))
    assert strong["prob"] == pytest.approx(1 / (1 + math.exp(-strong["estimate"])))
    assert fixed.loc[("vs_noise", "(Intercept)")]["p"] > 0.05
    wald = fits[(fits["condition"] == "targets") & (fits["model"] == "eps")].iloc[0]
    assert wald["wald_p"] < 1e-4 and wald["wald_df"] == 1
    # The z statistic and p come from the estimate and its standard error.
    row = fixed.loc[("targets", "eps=4")]
    assert row["z"] == pytest.approx(row["estimate"] / row["std_err"])
    assert row["p"] == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(abs(row["z"]) / math.sqrt(2)))), abs=1e-9)


def test_rank_deficient_design_is_refused() -> None:
    with pytest.raises(ValueError, match="rank deficient"):
        fit_logistic_glmm(np.array([0.0, 1.0, 1.0]), np.ones((3, 2)), {"g": np.array([0, 1, 1])})


def test_complete_separation_penalises_only_the_separated_budget() -> None:
    """A budget where every answer is the same has no finite ML log-odds: it alone gets a Jeffreys prior,
    reported as such, and the other budgets keep the estimates of a fit without it."""
    y = np.array([1.0, 1, 1, 1, 0, 1, 0, 1])
    X = np.stack([np.r_[np.ones(4), np.zeros(4)], np.r_[np.zeros(4), np.ones(4)]], axis=1)
    with pytest.raises(ValueError, match="complete separation: every one of the 4 answers is a success for eps=2"):
        fit_logistic_glmm(y, X, {"participant": np.arange(8) % 3}, ["eps=2", "eps=16"], separation="refuse")
    fit = fit_logistic_glmm(y, X, {"participant": np.arange(8) % 3}, ["eps=2", "eps=16"])
    assert list(fit.penalized) == ["eps=2"] and np.isfinite(fit.beta).all()
    # Jeffreys: 4 successes of 4 -> about log(4.5 / 0.5) with no random variation.
    assert fit.beta[0] == pytest.approx(math.log(4.5 / 0.5), abs=0.3)

    df = validate_export(simulate_export(40, 64, {2: 0.55, 4: 0.6, 8: 0.65, 16: 0.7}, participant_sd=0.4,
                                         image_sd=0.3, eps=(2, 4, 8, 16), n_images=20, seed=1))
    main = df["kind"] == "main"
    df.loc[main & (df["eps"] == 16), "chose_question_target"] = 1
    table, fits = analysis.mixed_model(df, fits=True)
    eps_rows = table[(table["model"] == "eps") & (table["effect"] == "fixed")].set_index("term")
    assert np.isfinite(eps_rows["estimate"]).all()
    assert eps_rows.loc["eps=16", "note"].startswith("penalised (Jeffreys prior): complete separation")
    assert eps_rows.drop("eps=16")["note"].isna().all()
    assert "penalised term(s) eps=16" in fits.set_index("model").loc["eps", "note"]
    # The estimable budgets match a fit without the separated budget (what lme4 reports for them).
    without = analysis.mixed_model(df[~(main & (df["eps"] == 16))], models=("eps",))
    without = without[without["effect"] == "fixed"].set_index("term")
    for term in ("eps=2", "eps=4", "eps=8"):
        assert eps_rows.loc[term, "estimate"] == pytest.approx(without.loc[term, "estimate"], abs=0.25 * without.loc[
            term, "std_err"]), term
        assert eps_rows.loc[term, "std_err"] == pytest.approx(without.loc[term, "std_err"], rel=0.05), term
