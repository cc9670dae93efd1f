"""Power analysis (``advbias power``): participants needed to detect a bias, by simulation.

Studies are drawn from the generative model of :mod:`analysis.simulation`
(participants and images as random intercepts, ``bias`` the population-average rate)
and analysed as ``advbias analyze`` does. The smallest size whose rejection rate
reaches the target power is found by bracketing and bisection, ``sims`` studies per
size with a seed per size. The analytic one-sample t-test answer is shown beside it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .simulation import check_probability, conditional_logit, logistic

from advbias.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: The tests a simulated study can be analysed with: the primary family's tests (one cell against chance),
#: and the dose-response and a contrast between two trial types (:func:`design_power`).
TESTS = ("ttest", "glmm")
DESIGN_TESTS = ("trend", "contrast")


@dataclass
class PowerResult:
    """Participants needed to detect a bias, by simulation and by the analytic t-test formula."""

    bias: float
    n_trials: int
    alpha: float
    target_power: float
    participant_sd: float
    image_sd: float
    n_images: int
    sims: int
    test: str
    cohen_d: float
    n_analytic: int | None
    n_simulation: int | None
    power_at_n: float
    false_positive_rate: float
    curve: "pd.DataFrame"
    description: str = ""
    #: the mixed model's power with infinitely many participants (normal approximation): the images alone
    power_ceiling: float = 1.0

    @property
    def false_positive_ok(self) -> bool:
        """Whether the simulated false-positive rate at the recommended size is within Monte Carlo error of alpha."""
        if not np.isfinite(self.false_positive_rate):
            return True
        return self.false_positive_rate <= self.alpha + math.sqrt(self.alpha * (1 - self.alpha) / self.sims)

    def summary(self) -> str:
        """A few lines for the terminal; the first one flags a size the test cannot support."""
        lines = [] if self.false_positive_ok else [
            f"NOT RECOMMENDED: at {self.n_simulation} participants the {self.test} rejects a true null in "
            f"{self.false_positive_rate:.3f} of simulated studies, above alpha {self.alpha:g} by more than its Monte "
            f"Carlo error ({math.sqrt(self.alpha * (1 - self.alpha) / self.sims):.3f}): its power is not real. "
            + ("Use the mixed model (--test glmm), which generalises over images." if self.test == "ttest" else "")]
        lines += [self.description] if self.description else [
            f"true bias {self.bias:g} (chance 0.5), {self.n_trials} main trials per participant, "
            f"{self.n_images} images; participant SD {self.participant_sd:g}, image SD {self.image_sd:g} (log-odds)"]
        lines += [
            f"effect size of participant means: d = {self.cohen_d:.3f}",
            f"analytic one-sample t-test (alpha {self.alpha:g}, power {self.target_power:g}): "
            f"{self.n_analytic if self.n_analytic is not None else 'n/a'} participants",
        ]
        if self.power_ceiling < self.target_power + CEILING_MARGIN:
            lines.append(
                f"WARNING: with {self.n_images} images (image SD {self.image_sd:g}) the power cannot exceed about "
                f"{self.power_ceiling:.2f} however many participants take part: near that ceiling the power hardly "
                f"grows with participants, so the size below is ill-determined (see --curve). More images help far "
                f"more: {images_for_ceiling(self, 0.95)} images give a ceiling of 0.95.")
        if self.n_simulation is None:
            lines.append(f"simulation ({self.test}, {self.sims} runs per size): power {self.target_power:g} not reached "
                         f"within {int(self.curve['n_participants'].max())} participants")
        else:
            se = math.sqrt(self.power_at_n * (1 - self.power_at_n) / self.sims)
            lines.append(f"simulation ({self.test}, {self.sims} runs per size): {self.n_simulation} participants "
                         f"(power {self.power_at_n:.3f} +/- {se:.3f}; false-positive rate at that size with no "
                         f"bias: {self.false_positive_rate:.3f})")
        return "\n".join(lines)


#: How close to the target the power ceiling may come before the answer is called ill-determined.
CEILING_MARGIN = 0.05


def power_ceiling(beta: float, image_sd: float, n_images: int, alpha: float) -> float:
    """The intercept test's power with infinitely many participants: only the images' variance is left,
    ``image_sd^2 / n_images`` (normal approximation, two-sided). 1 without image variance."""
    from scipy import stats

    if image_sd <= 0:
        return 1.0
    return float(stats.norm.cdf(abs(beta) / math.sqrt(image_sd ** 2 / n_images) - stats.norm.ppf(1 - alpha / 2)))


def images_for_ceiling(result: "PowerResult", ceiling: float) -> int:
    """Images needed for the power ceiling to reach ``ceiling`` (same bias and variances)."""
    from scipy import stats

    beta = conditional_logit(result.bias, math.hypot(result.participant_sd, result.image_sd))
    z = stats.norm.ppf(1 - result.alpha / 2) + stats.norm.ppf(ceiling)
    return int(math.ceil(result.image_sd ** 2 * (z / beta) ** 2)) if beta else result.n_images


def batch_counts(rng: np.random.Generator, sims: int, n: int, n_trials: int, beta: float,
                 participant_sd: float, image_sd: float, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Successes and trial counts per (simulation, participant, image) under the generative model.

    Participant ``j`` sees ``n_trials`` trials cycling through the images from a
    random starting image, so each image is seen ``n_trials // n_images`` or one
    more times (the balanced design :func:`analysis.simulation.simulate_trials` uses).
    """
    u = rng.normal(0.0, participant_sd, (sims, n, 1)) if participant_sd > 0 else np.zeros((sims, n, 1))
    w = rng.normal(0.0, image_sd, (sims, 1, n_images)) if image_sd > 0 else np.zeros((sims, 1, n_images))
    offset = rng.integers(0, n_images, (sims, n, 1))
    relative = (np.arange(n_images)[None, None, :] - offset) % n_images
    counts = n_trials // n_images + (relative < n_trials % n_images)
    successes = rng.binomial(counts, logistic(beta + u + w))
    return successes, counts


def ttest_p(means: np.ndarray, chance: float = 0.5) -> np.ndarray:
    """Two-sided one-sample t-test p-values along the last axis (what :func:`analysis.ttests` computes)."""
    from scipy import stats

    n = means.shape[-1]
    sd = means.std(axis=-1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (means.mean(axis=-1) - chance) / (sd / math.sqrt(n))
    p = 2.0 * stats.t.sf(np.abs(t), n - 1)
    return np.where(sd > 0, p, 1.0)


def _glmm_p(successes: np.ndarray, counts: np.ndarray) -> float:
    """p of the primary test for one simulated study (participants x images).

    The mixed model's intercept, its Wald statistic on a t reference with
    ``min(participants, images) - 1`` degrees of freedom, as ``primary.csv`` reports it.
    """
    from scipy import stats

    from .glmm import fit_logistic_glmm

    n, n_images = counts.shape
    participant = np.broadcast_to(np.arange(n)[:, None], (n, n_images)).ravel()
    image = np.broadcast_to(np.arange(n_images)[None, :], (n, n_images)).ravel()
    seen = counts.ravel() > 0
    fit = fit_logistic_glmm(successes.ravel()[seen], np.ones((int(seen.sum()), 1)),
                            {"participant": participant[seen], "source": image[seen]}, trials=counts.ravel()[seen])
    z = fit.summary()[0]["z"]
    return float(2.0 * stats.t.sf(abs(z), max(min(n, n_images) - 1, 1))) if np.isfinite(z) else 1.0


def rejection_rate(rng: np.random.Generator, n: int, sims: int, n_trials: int, beta: float,
                   participant_sd: float, image_sd: float, n_images: int, alpha: float, test: str) -> float:
    """Share of ``sims`` simulated studies of ``n`` participants whose test rejects at ``alpha``."""
    chunk = max(1, min(sims, int(2e7 // max(1, n * n_images))))
    rejected = done = 0
    while done < sims:
        b = min(chunk, sims - done)
        successes, counts = batch_counts(rng, b, n, n_trials, beta, participant_sd, image_sd, n_images)
        if test == "ttest":
            p = ttest_p(successes.sum(axis=-1) / n_trials)
        else:
            from .glmm_batch import primary_p

            p = primary_p(successes, counts)
        rejected += int(np.sum(p < alpha))
        done += b
    return rejected / sims


def smallest_n(rate: Callable[[int], float], power: float, start: int, max_participants: int,
               tolerance: float = 0.0) -> int | None:
    """The smallest ``n`` with ``rate(n) >= power`` (bracket upwards by 1.5x, then bisect); None if not reached.

    With ``tolerance`` the bisection stops once the bracket is within that share of its
    upper end; the answer is still a size whose simulated power reached the target
    (at most ``tolerance`` larger than needed), found with fewer sizes simulated.
    """
    lo, n, hi = 2, start, None
    while True:
        if rate(n) >= power:
            hi = n
            break
        lo = n
        if n >= max_participants:
            return None
        n = min(max_participants, max(n + 1, int(math.ceil(n * 1.5))))
    n = hi
    while n > 3:
        smaller = max(3, int(n / 1.5))
        if smaller <= lo:
            break
        if rate(smaller) >= power:
            hi = n = smaller
        else:
            lo = smaller
            break
    while hi - lo > max(1, int(tolerance * hi)):
        mid = (lo + hi) // 2
        if rate(mid) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def glmm_guess(beta: float, n_trials: int, participant_sd: float, image_sd: float, n_images: int, alpha: float,
               power: float, max_participants: int) -> int:
    """A starting size for the mixed model's search, from the normal approximation of its intercept's variance.

    ``var(intercept) ~ (participant_sd^2 + 1 / (n_trials v)) / n + image_sd^2 / n_images`` with
    ``v = p (1 - p)`` at the intercept: the image term does not shrink with more participants, so
    a study with few images may never reach the power (the guess is then the largest size).
    """
    from scipy import stats

    p = 1.0 / (1.0 + math.exp(-beta))
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    room = (beta / z) ** 2 - image_sd ** 2 / n_images
    if room <= 0:
        return max_participants
    return int(min(max_participants, max(3, math.ceil((participant_sd ** 2 + 1 / (n_trials * p * (1 - p))) / room))))


def _check(bias: float, n_trials: int, n_images: int, sims: int, alpha: float, power: float, test: str) -> None:
    check_probability(bias)
    if bias == 0.5:
        raise InputError("a bias of exactly 0.5 is no effect: power is alpha at every sample size")
    if n_trials < 1 or n_images < 1 or sims < 10:
        raise InputError("--trials and --images must be at least 1 and --sims at least 10")
    if not 0 < alpha < 1 or not 0 < power < 1 or power <= alpha:
        raise InputError("alpha and power must lie in (0, 1) with power > alpha")
    if test not in TESTS:
        raise InputError(f"unknown test {test!r}: use ttest or glmm")


def _analytic(bias: float, beta: float, n_trials: int, participant_sd: float, image_sd: float, n_images: int,
              alpha: float, power: float, seed: int) -> tuple[float, int | None]:
    """Cohen's d of participant means under the model, and the t-test's analytic sample size."""
    rng = np.random.default_rng([seed, 0])
    successes, _ = batch_counts(rng, 20, 2000, n_trials, beta, participant_sd, image_sd, n_images)
    means = successes.sum(axis=-1) / n_trials
    cohen_d = float((bias - 0.5) / np.sqrt(np.mean(means.var(axis=-1, ddof=1))))
    return cohen_d, _analytic_n(cohen_d, alpha, power)


def _analytic_n(cohen_d: float, alpha: float, power: float) -> int | None:
    """The one-sample t-test's sample size for effect size ``d`` (pingouin), or None."""
    import pingouin as pg

    try:
        n_float = pg.power_ttest(d=abs(cohen_d), power=power, alpha=alpha, contrast="one-sample")
    except (ValueError, RuntimeError):
        return None
    return int(math.ceil(n_float)) if n_float is not None and np.isfinite(n_float) else None


def power_analysis(
    bias: float,
    n_trials: int,
    alpha: float = 0.05,
    power: float = 0.8,
    *,
    participant_sd: float = 0.3,
    image_sd: float = 0.3,
    n_images: int = 50,
    sims: int = 1000,
    seed: int = 0,
    test: str = "ttest",
    max_participants: int = 5000,
    progress: bool = False,
) -> PowerResult:
    """Participants needed to detect ``bias`` with ``n_trials`` main trials each.

    Each simulated study is analysed by a one-sample t-test of participant means
    against 0.5 (``test="ttest"``) or the mixed model's intercept (``test="glmm"``,
    slow, but it generalises over images as well as participants).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    _check(bias, n_trials, n_images, sims, alpha, power, test)
    total_sd = math.hypot(participant_sd, image_sd)
    beta = conditional_logit(bias, total_sd)
    cohen_d, n_analytic = _analytic(bias, beta, n_trials, participant_sd, image_sd, n_images, alpha, power, seed)
    evaluated: dict[int, float] = {}
    bar = tqdm(desc="power", unit="size", disable=not progress)

    def rate(n: int) -> float:
        if n not in evaluated:
            evaluated[n] = rejection_rate(np.random.default_rng([seed, n]), n, sims, n_trials, beta,
                                          participant_sd, image_sd, n_images, alpha, test)
            bar.update()
            bar.set_postfix(n=n, power=f"{evaluated[n]:.3f}")
        return evaluated[n]

    ceiling = power_ceiling(beta, image_sd, n_images, alpha)
    if test == "glmm":  # each size costs seconds: start near the answer and stop within 2% of it
        # (within 10% near the power ceiling, where the power is flat in the size and a finer answer is noise)
        start = glmm_guess(beta, n_trials, participant_sd, image_sd, n_images, alpha, power, max_participants)
        hi = smallest_n(rate, power, start, max_participants,
                        tolerance=0.10 if ceiling < power + CEILING_MARGIN else 0.02)
    else:
        hi = smallest_n(rate, power, min(max(3, n_analytic or 10), max_participants), max_participants)
    bar.close()
    false_positive = math.nan
    if hi is not None:
        false_positive = rejection_rate(np.random.default_rng([seed, hi, 1]), hi, sims, n_trials,
                                        conditional_logit(0.5, total_sd), participant_sd, image_sd, n_images,
                                        alpha, test)
    curve = pd.DataFrame(sorted(evaluated.items()), columns=["n_participants", "power"])
    curve["mc_se"] = np.sqrt(curve["power"] * (1 - curve["power"]) / sims)
    return PowerResult(
        bias=bias, n_trials=n_trials, alpha=alpha, target_power=power, participant_sd=participant_sd,
        image_sd=image_sd, n_images=n_images, sims=sims, test=test, cohen_d=cohen_d, n_analytic=n_analytic,
        n_simulation=hi, power_at_n=evaluated.get(hi, math.nan) if hi is not None else math.nan,
        false_positive_rate=false_positive, curve=curve, power_ceiling=ceiling,
    )


# --------------------------------------------------------------------------- the trend and a contrast
def cell_means(rng: np.random.Generator, sims: int, n: int, n_trials: int, betas: list[float],
               participant_sd: float, image_sd: float, n_images: int) -> np.ndarray:
    """Participant means per cell, ``(sims, n, cells)``: ``n_trials`` per cell, the same people and images."""
    u = rng.normal(0.0, participant_sd, (sims, n, 1)) if participant_sd > 0 else np.zeros((sims, n, 1))
    w = rng.normal(0.0, image_sd, (sims, 1, n_images)) if image_sd > 0 else np.zeros((sims, 1, n_images))
    out = []
    for beta in betas:
        offset = rng.integers(0, n_images, (sims, n, 1))
        counts = n_trials // n_images + ((np.arange(n_images)[None, None, :] - offset) % n_images < n_trials % n_images)
        out.append(rng.binomial(counts, logistic(beta + u + w)).sum(axis=-1) / n_trials)
    return np.stack(out, axis=-1)


def _statistic(test: str, means: np.ndarray, eps: list[int]) -> np.ndarray:
    """Per participant: the least-squares slope of the cell means on log2(eps), or the difference of two cells."""
    if test == "trend":
        x = np.log2(np.asarray(eps, dtype=float))
        x = x - x.mean()
        return means @ x / float(x @ x)
    return means[..., 0] - means[..., 1]


def design_power(
    test: str,
    biases: dict[Any, float],
    n_trials: int,
    alpha: float = 0.05,
    power: float = 0.8,
    *,
    participant_sd: float = 0.3,
    image_sd: float = 0.3,
    n_images: int = 50,
    sims: int = 1000,
    seed: int = 0,
    max_participants: int = 5000,
    progress: bool = False,
) -> PowerResult:
    """Participants needed for the dose-response (``trend``) or a contrast between two trial types.

    ``trend``: ``biases`` maps each budget to its population-average bias, ``n_trials``
    main trials per budget; each simulated study is tested by a one-sample t-test of
    the participants' least-squares slopes of their cell means on log2(eps) (a
    two-stage, summary-statistics test of the dose-response). ``contrast``: ``biases``
    maps the trial type and its baseline (in that order) to their biases, ``n_trials``
    per trial type, tested by the paired t-test of ``contrasts.csv``. Both cells
    share the people and the images, as in the experiment.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if test not in DESIGN_TESTS:
        raise InputError(f"unknown test {test!r}: use trend or contrast")
    keys = list(biases)
    if (test == "trend" and len(keys) < 2) or (test == "contrast" and len(keys) != 2):
        raise InputError("--test trend needs a bias per budget (2:0.52,16:0.6); --test contrast needs --bias and "
                         "--baseline-bias")
    for value in biases.values():
        check_probability(value)
    if len(set(biases.values())) == 1:
        raise InputError("every cell has the same bias: no effect, power is alpha at every sample size")
    _check(0.6, n_trials, n_images, sims, alpha, power, "ttest")
    total_sd = math.hypot(participant_sd, image_sd)
    betas = [conditional_logit(biases[k], total_sd) for k in keys]
    args = (n_trials, participant_sd, image_sd, n_images)
    big = _statistic(test, cell_means(np.random.default_rng([seed, 0]), 20, 2000, n_trials, betas, *args[1:]), keys)
    cohen_d = float(big.mean() / np.sqrt(np.mean(big.var(axis=-1, ddof=1))))
    n_analytic = _analytic_n(cohen_d, alpha, power)

    def rate_for(rng: np.random.Generator, n: int, cells: list[float]) -> float:
        rejected = done = 0
        chunk = max(1, min(sims, int(2e7 // max(1, n * n_images * len(cells)))))
        while done < sims:
            b = min(chunk, sims - done)
            stat = _statistic(test, cell_means(rng, b, n, n_trials, cells, *args[1:]), keys)
            rejected += int(np.sum(ttest_p(stat, 0.0) < alpha))
            done += b
        return rejected / sims

    evaluated: dict[int, float] = {}
    bar = tqdm(desc="power", unit="size", disable=not progress)

    def rate(n: int) -> float:
        if n not in evaluated:
            evaluated[n] = rate_for(np.random.default_rng([seed, n]), n, betas)
            bar.update()
        return evaluated[n]

    hi = smallest_n(rate, power, min(max(3, n_analytic or 10), max_participants), max_participants)
    bar.close()
    null = [float(np.mean(betas))] * len(betas)
    false_positive = rate_for(np.random.default_rng([seed, hi, 1]), hi, null) if hi is not None else math.nan
    curve = pd.DataFrame(sorted(evaluated.items()), columns=["n_participants", "power"])
    curve["mc_se"] = np.sqrt(curve["power"] * (1 - curve["power"]) / sims)
    return PowerResult(
        bias=float("nan"), n_trials=n_trials, alpha=alpha, target_power=power, participant_sd=participant_sd,
        image_sd=image_sd, n_images=n_images, sims=sims, test=test, cohen_d=cohen_d, n_analytic=n_analytic,
        n_simulation=hi, power_at_n=evaluated.get(hi, math.nan) if hi is not None else math.nan,
        false_positive_rate=false_positive, curve=curve,
        description=_describe(test, biases, n_trials, n_images, participant_sd, image_sd),
    )


def _describe(test: str, biases: dict[Any, float], n_trials: int, n_images: int, participant_sd: float,
              image_sd: float) -> str:
    keys = list(biases)
    what = ("dose-response: slope of participant cell means on log2(eps)" if test == "trend" else
            f"contrast {keys[0]} minus {keys[1]}: paired differences of participant means")
    return (f"{what}; true biases " + ", ".join(f"{k}: {v:g}" for k, v in biases.items())
            + f"; {n_trials} main trials per cell, {n_images} images; participant SD {participant_sd:g}, "
            f"image SD {image_sd:g} (log-odds)")
