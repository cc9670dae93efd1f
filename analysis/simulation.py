"""Synthetic data with a known truth: exports for tests and power, and participants over HTTP.

The generative model is the one the mixed model assumes. For participant ``i``,
source image ``s`` and a main trial of condition ``c`` at budget ``e``::

    logit P(choose the image perturbed toward the asked category) = beta[c, e] + u_i + w_s
    u_i ~ N(0, participant_sd^2),   w_s ~ N(0, image_sd^2)

``bias`` is given on the probability scale as the *population-average* rate,
``E[logistic(beta + u + w)]``, because that is what the mean of participant means
estimates; ``beta`` (the subject-specific log-odds that the mixed model's fixed
effects estimate) is solved from it by Gauss-Hermite quadrature. Both are kept in
``frame.attrs["truth"]``.

A left/right preference ``side_bias`` (log-odds of answering "left") can be added:
``P(left) = logistic(s * eta + side_bias)`` with ``s = +1`` when the target is on the
left and ``-1`` otherwise.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

BiasSpec = Union[float, Mapping[Any, Any]]

DEFAULT_EPS: tuple[int, ...] = (2, 4, 8, 16)
DEFAULT_CATEGORIES: tuple[str, str] = ("cat", "dog")


def _logistic(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(64)
_GH_WEIGHTS = _GH_WEIGHTS / _GH_WEIGHTS.sum()


def marginal_probability(beta: float, sd: float) -> float:
    """``E[logistic(beta + b)]`` for ``b ~ N(0, sd^2)`` (64-point Gauss-Hermite)."""
    return float(np.sum(_GH_WEIGHTS * _logistic(beta + sd * _GH_NODES)))


def conditional_logit(bias: float, sd: float) -> float:
    """The log-odds ``beta`` whose population-average probability is ``bias``.

    With no random-effect variance this is ``logit(bias)``; with variance the
    subject-specific effect is larger in magnitude than the marginal one.
    """
    from scipy.optimize import brentq

    if not 0.0 < bias < 1.0:
        raise ValueError(f"bias must be strictly between 0 and 1, got {bias}")
    if sd <= 0:
        return math.log(bias / (1.0 - bias))
    return float(brentq(lambda b: marginal_probability(b, sd) - bias, -40.0, 40.0, xtol=1e-12))


def parse_bias(text: str) -> BiasSpec:
    """Parse ``0.55`` or a per-budget ``2:0.52,4:0.55,8:0.6`` from the command line."""
    text = text.strip()
    try:
        if ":" not in text and "=" not in text:
            value = float(text)
            _check_probability(value)
            return value
        spec: dict[int, float] = {}
        for part in text.split(","):
            key, _, value = part.replace("=", ":").partition(":")
            spec[int(key)] = float(value)
            _check_probability(spec[int(key)])
        return spec
    except ValueError as exc:
        raise ValueError(f"--bias must be a probability like 0.55 or per budget like 2:0.52,4:0.55 ({exc})") from None


def _check_probability(value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{value} is not strictly between 0 and 1")


def bias_for(spec: BiasSpec, condition: str, eps: int) -> float:
    """Resolve a bias specification for one condition and budget.

    ``spec`` is a float (everywhere), ``{eps: p}`` (per budget, all conditions),
    ``{condition: float | {eps: p}}`` or ``{(condition, eps): p}``.
    """
    if isinstance(spec, (int, float)):
        return float(spec)
    if (condition, eps) in spec:
        return float(spec[(condition, eps)])
    if condition in spec:
        return bias_for(spec[condition], condition, eps)
    if eps in spec:
        return float(spec[eps])
    raise ValueError(f"the bias specification gives no value for condition {condition!r} at eps {eps}")


@dataclass
class SimulatedTrials:
    """The outcome arrays of a simulation (one entry per trial), before formatting as an export."""

    participant: np.ndarray      # participant index
    trial_index: np.ndarray
    kind: np.ndarray             # 0 practice, 1 main, 2 catch
    condition: np.ndarray        # index into ``conditions`` (-1 for catch)
    eps: np.ndarray
    source: np.ndarray           # source-image index
    target_left: np.ndarray      # bool
    response_left: np.ndarray    # bool
    correct: np.ndarray          # chose_question_target
    question_first: np.ndarray   # bool: question asks about categories[0]
    rt_ms: np.ndarray
    fullscreen: np.ndarray
    blurred: np.ndarray
    blur_events: np.ndarray
    status: np.ndarray           # per participant: 0 completed, 1 in_progress
    kind_of_participant: np.ndarray  # per participant: 0 attentive, 1 inattentive, 2 distracted
    conditions: tuple[str, ...]
    truth: dict[str, Any] = field(default_factory=dict)
    participant_effects: np.ndarray | None = None
    image_effects: np.ndarray | None = None


def simulate_trials(
    n_participants: int,
    n_trials: int,
    bias: BiasSpec = 0.55,
    participant_sd: float = 0.3,
    image_sd: float = 0.3,
    *,
    eps: Sequence[int] = DEFAULT_EPS,
    conditions: Sequence[str] = ("targets",),
    n_images: int = 50,
    n_catch: int = 10,
    n_practice: int = 4,
    catch_accuracy: float = 0.97,
    side_bias: float = 0.0,
    inattentive: float = 0.0,
    incomplete: float = 0.0,
    distracted: float = 0.0,
    seed: int | None = 0,
) -> SimulatedTrials:
    """Draw every trial of a study as arrays (fast path used by power analysis).

    ``n_trials`` main trials per participant are spread as evenly as possible over
    ``conditions x eps``; ``n_catch`` catch trials are mixed in and ``n_practice``
    practice trials come first. Fractions ``inattentive`` (answer at random, fast),
    ``distracted`` (leave fullscreen and blur the window often) and ``incomplete``
    (stop part-way, status ``in_progress``) of participants misbehave so that
    exclusions have something to find; the truth describes the others.
    """
    if n_participants < 1 or n_trials < 1:
        raise ValueError("n_participants and n_trials must be at least 1")
    if n_images < 1:
        raise ValueError("n_images must be at least 1")
    eps = tuple(int(e) for e in eps)
    conditions = tuple(conditions)
    unknown = set(conditions) - {"targets", "vs_clean", "vs_flip", "vs_noise"}
    if unknown or not conditions or not eps:
        raise ValueError(f"conditions must be among targets, vs_clean, vs_flip, vs_noise (got {conditions})")
    rng = np.random.default_rng(seed)
    total_sd = math.hypot(participant_sd, image_sd)
    cells = [(c, e) for c in range(len(conditions)) for e in eps]
    marginal = {(conditions[c], e): bias_for(bias, conditions[c], e) for c, e in cells}
    for value in marginal.values():
        _check_probability(value)
    beta = {key: conditional_logit(p, total_sd) for key, p in marginal.items()}

    n = n_participants
    u = rng.normal(0.0, participant_sd, n) if participant_sd > 0 else np.zeros(n)
    w = rng.normal(0.0, image_sd, n_images) if image_sd > 0 else np.zeros(n_images)
    role = np.zeros(n, dtype=np.int8)
    draw = rng.random(n)
    role[draw < inattentive] = 1
    role[(draw >= inattentive) & (draw < inattentive + distracted)] = 2

    # Main-trial template: cells repeated as evenly as possible, then shuffled per participant.
    reps = np.full(len(cells), n_trials // len(cells))
    reps[: n_trials % len(cells)] += 1
    cell_of_trial = np.repeat(np.arange(len(cells)), reps)
    order = rng.random((n, n_trials)).argsort(axis=1)
    cell = cell_of_trial[order]                                     # (n, n_trials)
    cell_cond = np.array([c for c, _ in cells])[cell]
    cell_eps = np.array([e for _, e in cells])[cell]
    cell_beta = np.array([beta[(conditions[c], e)] for c, e in cells])[cell]
    # Sources: each participant cycles through a private permutation of the images.
    perm = rng.random((n, n_images)).argsort(axis=1)
    main_source = perm[:, np.arange(n_trials) % n_images]

    practice_cond = np.zeros((n, n_practice), dtype=int)
    practice_eps = np.full((n, n_practice), max(eps))
    practice_beta = np.full((n, n_practice), beta[(conditions[0], max(eps))])
    practice_source = rng.integers(0, n_images, (n, n_practice))
    catch_source = rng.integers(0, n_images, (n, n_catch))

    # Sequence: practice, then main and catch trials interleaved at random.
    body = n_trials + n_catch
    is_catch = np.zeros((n, body), dtype=bool)
    if n_catch:
        slots = rng.random((n, body)).argsort(axis=1)[:, :n_catch]
        np.put_along_axis(is_catch, slots, True, axis=1)
    main_pos = np.cumsum(~is_catch, axis=1) - 1
    catch_pos = np.cumsum(is_catch, axis=1) - 1
    rows = np.arange(n)[:, None]

    kind = np.concatenate([np.zeros((n, n_practice), int), np.where(is_catch, 2, 1)], axis=1)
    condition = np.concatenate(
        [practice_cond, np.where(is_catch, -1, cell_cond[rows, np.clip(main_pos, 0, n_trials - 1)])], axis=1)
    eps_arr = np.concatenate(
        [practice_eps, np.where(is_catch, 0, cell_eps[rows, np.clip(main_pos, 0, n_trials - 1)])], axis=1)
    eta = np.concatenate(
        [practice_beta, np.where(is_catch, 0.0, cell_beta[rows, np.clip(main_pos, 0, n_trials - 1)])], axis=1)
    source = np.concatenate([
        practice_source,
        np.where(is_catch, catch_source[rows, np.clip(catch_pos, 0, max(n_catch - 1, 0))] if n_catch else 0,
                 main_source[rows, np.clip(main_pos, 0, n_trials - 1)]),
    ], axis=1)
    total = n_practice + body
    eta = eta + u[:, None] + w[source]
    target_left = rng.random((n, total)) < 0.5
    sign = np.where(target_left, 1.0, -1.0)
    p_left = _logistic(sign * eta + side_bias)
    p_left = np.where(kind == 2, np.where(target_left, catch_accuracy, 1.0 - catch_accuracy), p_left)
    p_left = np.where(role[:, None] == 1, 0.5, p_left)
    response_left = rng.random((n, total)) < p_left
    correct = response_left == target_left
    question_first = rng.random((n, total)) < 0.5

    median_rt = np.where(role == 1, 190.0, np.exp(rng.normal(math.log(850.0), 0.25, n)))
    rt = median_rt[:, None] * np.exp(rng.normal(0.0, 0.35, (n, total)))
    fullscreen = np.ones((n, total), dtype=np.int8)
    blur_events = np.zeros((n, total), dtype=np.int64)
    distracted_rows = role == 2
    if distracted_rows.any():
        k = int(distracted_rows.sum())
        fullscreen[distracted_rows] = (rng.random((k, total)) > 0.4).astype(np.int8)
        blur_events[distracted_rows] = rng.poisson(0.6, (k, total))
    blurred = (blur_events > 0).astype(np.int8)

    status = np.zeros(n, dtype=np.int8)
    keep = np.ones((n, total), dtype=bool)
    quitters = rng.random(n) < incomplete
    if quitters.any():
        status[quitters] = 1
        stop = (rng.uniform(0.2, 0.8, n) * total).astype(int)
        keep &= ~(quitters[:, None] & (np.arange(total)[None, :] >= stop[:, None]))

    trial_index = np.broadcast_to(np.arange(total), (n, total))
    participant = np.broadcast_to(np.arange(n)[:, None], (n, total))
    take = keep.ravel()

    def flat(a: np.ndarray) -> np.ndarray:
        return np.asarray(a).ravel()[take]

    truth = {
        "bias": {f"{c}:{e}": p for (c, e), p in marginal.items()},
        "logit": {f"{c}:{e}": b for (c, e), b in beta.items()},
        "participant_sd": participant_sd,
        "image_sd": image_sd,
        "side_bias": side_bias,
        "catch_accuracy": catch_accuracy,
        "seed": seed,
    }
    return SimulatedTrials(
        participant=flat(participant), trial_index=flat(trial_index), kind=flat(kind),
        condition=flat(condition), eps=flat(eps_arr), source=flat(source),
        target_left=flat(target_left), response_left=flat(response_left), correct=flat(correct),
        question_first=flat(question_first), rt_ms=flat(rt), fullscreen=flat(fullscreen),
        blurred=flat(blurred), blur_events=flat(blur_events), status=status,
        kind_of_participant=role, conditions=conditions, truth=truth,
        participant_effects=u, image_effects=w,
    )


def _hex(text: str, length: int = 64) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def simulate_export(
    n_participants: int,
    n_trials: int,
    bias: BiasSpec = 0.55,
    participant_sd: float = 0.3,
    image_sd: float = 0.3,
    *,
    eps: Sequence[int] = DEFAULT_EPS,
    conditions: Sequence[str] = ("targets",),
    n_images: int = 50,
    n_catch: int = 10,
    n_practice: int = 4,
    catch_accuracy: float = 0.97,
    side_bias: float = 0.0,
    inattentive: float = 0.0,
    incomplete: float = 0.0,
    distracted: float = 0.0,
    categories: tuple[str, str] = DEFAULT_CATEGORIES,
    experiment: str = "simulated",
    seed: int | None = 0,
) -> "pd.DataFrame":
    """A trial export (``docs/export.md``, every column, documented order) with a known truth.

    See :func:`simulate_trials` for the parameters and the module docstring for
    the model. The truth (population-average bias and subject-specific log-odds
    per ``"condition:eps"``, the random-effect SDs and the drawn effects) is in
    ``frame.attrs["truth"]``; ``frame.attrs["participant_roles"]`` maps each
    participant id to ``attentive``, ``inattentive`` or ``distracted``. The drawn
    random effects themselves are only in :func:`simulate_trials`'s result.
    """
    import pandas as pd

    from .data import EXPORT_COLUMNS

    sim = simulate_trials(
        n_participants, n_trials, bias, participant_sd, image_sd, eps=eps, conditions=conditions,
        n_images=n_images, n_catch=n_catch, n_practice=n_practice, catch_accuracy=catch_accuracy,
        side_bias=side_bias, inattentive=inattentive, incomplete=incomplete, distracted=distracted,
        seed=seed,
    )
    rng = np.random.default_rng(None if seed is None else seed + 7919)
    a, b = categories
    pids = np.array([_hex(f"{seed}:participant:{i}", 16) for i in range(n_participants)], dtype=object)
    sources = np.array([f"simulated/img{j:04d}.png" for j in range(n_images)], dtype=object)
    source_sha = [_hex(f"{seed}:{s}") for s in sources]
    cond_names = np.array(list(sim.conditions) + ["catch"], dtype=object)
    p = sim.participant
    kind = np.array(["practice", "main", "catch"], dtype=object)[sim.kind]
    is_catch = sim.kind == 2
    condition = np.where(is_catch, "catch", cond_names[np.where(sim.condition < 0, len(sim.conditions), sim.condition)])
    question_target = np.where(sim.question_first, a, b).astype(object)
    other = np.where(sim.question_first, b, a).astype(object)
    eps = sim.eps.astype(np.int64)
    src = sources[sim.source]
    pair_key = np.array([f"{source_sha[s][:16]}:{a}:{b}:{e}" for s, e in zip(sim.source, eps)], dtype=object)
    pair_key[is_catch] = ""
    # What the non-target image was perturbed toward, by condition.
    foil = np.where(condition == "targets", other, "")
    foil = np.where(is_catch, other, foil).astype(object)
    left_target = np.where(sim.target_left, question_target, foil).astype(object)
    right_target = np.where(sim.target_left, foil, question_target).astype(object)
    foil_kind = np.select(
        [condition == "targets", condition == "vs_clean", condition == "vs_flip", condition == "vs_noise"],
        ["adversarial", "clean", "flip", "noise"], "clean").astype(object)
    target_kind = np.where(is_catch, "clean", "adversarial").astype(object)
    target_id = np.array([_hex(f"{sid}:adversarial:{q}:{e}") for sid, q, e in zip(sim.source, question_target, eps)],
                         dtype=object)
    foil_id = np.array([_hex(f"{sid}:{fk}:{o}:{e}") for sid, fk, o, e in zip(sim.source, foil_kind, other, eps)],
                       dtype=object)
    if is_catch.any():
        # Catch trials show two clean photos of different categories.
        target_id[is_catch] = [_hex(f"{sid}:clean:{q}") for sid, q in zip(sim.source[is_catch], question_target[is_catch])]
        foil_id[is_catch] = [_hex(f"{sid}:clean:{o}") for sid, o in zip(sim.source[is_catch], other[is_catch])]
    left_id = np.where(sim.target_left, target_id, foil_id)
    right_id = np.where(sim.target_left, foil_id, target_id)
    response = np.where(sim.response_left, "left", "right").astype(object)
    chosen_target = np.where(sim.response_left, left_target, right_target)
    onset = np.zeros(len(p))
    start = 0
    # requestAnimationFrame-style timestamps: cumulative RT plus an inter-trial gap per participant.
    gaps = sim.rt_ms + 1500.0
    boundaries = np.flatnonzero(np.diff(p)) + 1
    for stop in list(boundaries) + [len(p)]:
        onset[start:stop] = 1000.0 + np.concatenate([[0.0], np.cumsum(gaps[start:stop])[:-1]])
        start = stop
    base = pd.Timestamp("2024-01-01T09:00:00Z") + pd.to_timedelta(p * 3600.0, unit="s")
    received = (base + pd.to_timedelta((onset + sim.rt_ms) / 1000.0, unit="s")).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    frame = pd.DataFrame({
        "experiment": experiment,
        "participant": pids[p],
        "prolific_pid": np.array([_hex(f"prolific:{x}", 24) for x in pids], dtype=object)[p],
        "study_id": "simulated-study",
        "session_id": np.array([_hex(f"session:{x}", 24) for x in pids], dtype=object)[p],
        "participant_status": np.array(["completed", "in_progress"], dtype=object)[sim.status[p]],
        "list": (p % 4).astype(np.int64),
        "seed": (np.array([int(x[:7], 16) for x in pids], dtype=np.int64))[p],
        "trial_index": sim.trial_index.astype(np.int64),
        "kind": kind,
        "condition": condition,
        "question": np.array([f"Which image is more {q}-like?" for q in question_target], dtype=object),
        "question_target": question_target,
        "eps": eps,
        "source": src,
        "pair_key": pair_key,
        "left_stimulus_id": left_id,
        "right_stimulus_id": right_id,
        "left_target": left_target,
        "right_target": right_target,
        "left_condition": np.where(sim.target_left, target_kind, foil_kind).astype(object),
        "right_condition": np.where(sim.target_left, foil_kind, target_kind).astype(object),
        "target_side": np.where(sim.target_left, "left", "right").astype(object),
        "response": response,
        "chosen_target": chosen_target,
        "chose_question_target": sim.correct.astype(np.int64),
        "response_source": np.where(rng.random(len(p)) < 0.9, "key", "click").astype(object),
        "rt_ms": np.round(sim.rt_ms, 1),
        "presentation_ms": np.nan,
        "onset_frame_ms": np.round(onset, 3),
        "offset_frame_ms": np.nan,
        "refresh_hz": 60.0,
        "fullscreen": sim.fullscreen.astype(np.int64),
        "blurred": sim.blurred.astype(np.int64),
        "blur_events": sim.blur_events.astype(np.int64),
        "server_received_at": np.asarray(received, dtype=object),
    }, columns=list(EXPORT_COLUMNS))
    for column in ("pair_key", "left_target", "right_target", "chosen_target"):
        frame[column] = frame[column].replace("", None)
    frame.attrs["truth"] = sim.truth
    roles = np.array(["attentive", "inattentive", "distracted"], dtype=object)[sim.kind_of_participant]
    frame.attrs["participant_roles"] = dict(zip(pids.tolist(), roles.tolist()))
    return frame


# --------------------------------------------------------------------------- power
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

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"true bias {self.bias:g} (chance 0.5), {self.n_trials} main trials per participant, "
            f"{self.n_images} images; participant SD {self.participant_sd:g}, image SD {self.image_sd:g} (log-odds)",
            f"effect size of participant means: d = {self.cohen_d:.3f}",
            f"analytic one-sample t-test (alpha {self.alpha:g}, power {self.target_power:g}): "
            f"{self.n_analytic if self.n_analytic is not None else 'n/a'} participants",
        ]
        if self.n_simulation is None:
            lines.append(f"simulation ({self.test}, {self.sims} runs per size): power {self.target_power:g} not reached "
                         f"within {int(self.curve['n_participants'].max())} participants")
        else:
            se = math.sqrt(self.power_at_n * (1 - self.power_at_n) / self.sims)
            lines.append(f"simulation ({self.test}, {self.sims} runs per size): {self.n_simulation} participants "
                         f"(power {self.power_at_n:.3f} +/- {se:.3f}; false-positive rate at that size with no "
                         f"bias: {self.false_positive_rate:.3f})")
        return "\n".join(lines)


def _batch_counts(rng: np.random.Generator, sims: int, n: int, n_trials: int, beta: float,
                  participant_sd: float, image_sd: float, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Successes and trial counts per (simulation, participant, image) under the generative model.

    Participant ``j`` sees ``n_trials`` trials cycling through the images from a
    random starting image, so each image is seen ``n_trials // n_images`` or one
    more times (the balanced design :func:`simulate_trials` uses).
    """
    u = rng.normal(0.0, participant_sd, (sims, n, 1)) if participant_sd > 0 else np.zeros((sims, n, 1))
    w = rng.normal(0.0, image_sd, (sims, 1, n_images)) if image_sd > 0 else np.zeros((sims, 1, n_images))
    offset = rng.integers(0, n_images, (sims, n, 1))
    relative = (np.arange(n_images)[None, None, :] - offset) % n_images
    counts = n_trials // n_images + (relative < n_trials % n_images)
    successes = rng.binomial(counts, _logistic(beta + u + w))
    return successes, counts


def _ttest_p(means: np.ndarray, chance: float = 0.5) -> np.ndarray:
    """Two-sided one-sample t-test p-values along the last axis (what :func:`analysis.ttests` computes)."""
    from scipy import stats

    n = means.shape[-1]
    sd = means.std(axis=-1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (means.mean(axis=-1) - chance) / (sd / math.sqrt(n))
    p = 2.0 * stats.t.sf(np.abs(t), n - 1)
    return np.where(sd > 0, p, 1.0)


def _rejection_rate(rng: np.random.Generator, n: int, sims: int, n_trials: int, beta: float,
                    participant_sd: float, image_sd: float, n_images: int, alpha: float, test: str) -> float:
    chunk = max(1, min(sims, int(2e7 // max(1, n * n_images))))
    rejected = 0
    done = 0
    while done < sims:
        b = min(chunk, sims - done)
        successes, counts = _batch_counts(rng, b, n, n_trials, beta, participant_sd, image_sd, n_images)
        if test == "ttest":
            p = _ttest_p(successes.sum(axis=-1) / n_trials)
        else:
            from .glmm import fit_logistic_glmm

            p = np.empty(b)
            participant = np.broadcast_to(np.arange(n)[:, None], (n, n_images)).ravel()
            image = np.broadcast_to(np.arange(n_images)[None, :], (n, n_images)).ravel()
            for i in range(b):
                seen = counts[i].ravel() > 0
                fit = fit_logistic_glmm(successes[i].ravel()[seen], np.ones((int(seen.sum()), 1)),
                                        {"participant": participant[seen], "source": image[seen]},
                                        trials=counts[i].ravel()[seen])
                p[i] = fit.summary()[0]["p"]
        rejected += int(np.sum(p < alpha))
        done += b
    return rejected / sims


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

    Simulation: studies are drawn from the mixed model (participants and images as
    random intercepts, ``bias`` the population-average rate) and analysed as the
    analysis does — a one-sample t-test of participant means against 0.5
    (``test="ttest"``) or the mixed model's intercept (``test="glmm"``, slow). The
    smallest size whose rejection rate reaches ``power`` is found by bracketing
    and bisection, ``sims`` studies per size with a seed per size. The analytic
    answer solves the one-sample t-test power equation (pingouin) for the
    effect size ``d`` that participant means have under the same model.
    """
    import pandas as pd
    import pingouin as pg
    from tqdm.auto import tqdm

    _check_probability(bias)
    if bias == 0.5:
        raise ValueError("a bias of exactly 0.5 is no effect: power is alpha at every sample size")
    if n_trials < 1 or n_images < 1 or sims < 10:
        raise ValueError("--trials and --images must be at least 1 and --sims at least 10")
    if not 0 < alpha < 1 or not 0 < power < 1 or power <= alpha:
        raise ValueError("alpha and power must lie in (0, 1) with power > alpha")
    if test not in ("ttest", "glmm"):
        raise ValueError(f"unknown test {test!r}: use ttest or glmm")
    beta = conditional_logit(bias, math.hypot(participant_sd, image_sd))

    # Effect size of participant means within a study (images fixed within a study).
    rng = np.random.default_rng([seed, 0])
    successes, _ = _batch_counts(rng, 20, 2000, n_trials, beta, participant_sd, image_sd, n_images)
    means = successes.sum(axis=-1) / n_trials
    cohen_d = float((bias - 0.5) / np.sqrt(np.mean(means.var(axis=-1, ddof=1))))
    try:
        n_float = pg.power_ttest(d=abs(cohen_d), power=power, alpha=alpha, contrast="one-sample")
        n_analytic = int(math.ceil(n_float)) if n_float is not None and np.isfinite(n_float) else None
    except (ValueError, RuntimeError):
        n_analytic = None

    evaluated: dict[int, float] = {}
    bar = tqdm(desc="power", unit="size", disable=not progress)

    def rate(n: int) -> float:
        if n not in evaluated:
            evaluated[n] = _rejection_rate(np.random.default_rng([seed, n]), n, sims, n_trials, beta,
                                           participant_sd, image_sd, n_images, alpha, test)
            bar.update()
            bar.set_postfix(n=n, power=f"{evaluated[n]:.3f}")
        return evaluated[n]

    start = min(max(3, n_analytic or 10), max_participants)
    lo, hi = 2, None
    n = start
    while True:
        if rate(n) >= power:
            hi = n
            break
        lo = n
        if n >= max_participants:
            break
        n = min(max_participants, max(n + 1, int(math.ceil(n * 1.5))))
    if hi is not None:
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
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if rate(mid) >= power:
                hi = mid
            else:
                lo = mid
    bar.close()
    false_positive = math.nan
    if hi is not None:
        beta0 = conditional_logit(0.5, math.hypot(participant_sd, image_sd))
        false_positive = _rejection_rate(np.random.default_rng([seed, hi, 1]), hi, sims, n_trials, beta0,
                                         participant_sd, image_sd, n_images, alpha, test)
    curve = pd.DataFrame(sorted(evaluated.items()), columns=["n_participants", "power"])
    curve["mc_se"] = np.sqrt(curve["power"] * (1 - curve["power"]) / sims)
    return PowerResult(
        bias=bias, n_trials=n_trials, alpha=alpha, target_power=power, participant_sd=participant_sd,
        image_sd=image_sd, n_images=n_images, sims=sims, test=test, cohen_d=cohen_d, n_analytic=n_analytic,
        n_simulation=hi, power_at_n=evaluated.get(hi, math.nan) if hi is not None else math.nan,
        false_positive_rate=false_positive, curve=curve,
    )


# --------------------------------------------------------------------------- participants over HTTP
@dataclass
class _Stimulus:
    condition: str
    target: str
    eps: int
    source: str
    category: str


def _read_manifest(set_dir: Path) -> dict[str, _Stimulus]:
    """stimulus_id -> what the image is, from ``SETDIR/manifest.csv`` (docs/manifest.md)."""
    import csv

    path = Path(set_dir) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{set_dir} is not a stimulus set: manifest.csv is missing")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        needed = {"stimulus_id", "condition", "target", "eps", "source", "ensemble_category"}
        missing = needed - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path} lacks the column(s) {', '.join(sorted(missing))}")
        return {row["stimulus_id"]: _Stimulus(row["condition"], row["target"] or "", int(row["eps"] or 0),
                                               row["source"], row["ensemble_category"] or "")
                for row in reader}


def _pixel_key(png: bytes) -> str:
    """A name for an image's pixels, whatever its file encoding (the server re-encodes what it delivers)."""
    import hashlib
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        rgb = image.convert("RGB")
        return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def _pixel_index(set_dir: Path, manifest: Mapping[str, _Stimulus]) -> dict[str, str]:
    """pixel key -> stimulus id for every image of the set.

    Image URLs are keyed aliases that only the server can map to manifest rows, so a
    synthetic participant, like a person, recognises an image by what it shows: it
    holds the set, and matches the delivered pixels against it.
    """
    index: dict[str, str] = {}
    for stimulus_id in manifest:
        path = Path(set_dir) / "images" / f"{stimulus_id}.png"
        if not path.is_file():
            raise FileNotFoundError(f"image {path} listed in the manifest is missing")
        index.setdefault(_pixel_key(path.read_bytes()), stimulus_id)
    return index


def _busy_wait(reply: Any) -> float | None:
    """Seconds to wait when the server asks a start to come back later (503 with retry_after_ms), else None."""
    if reply.status_code != 503:
        return None
    try:
        wait_ms = reply.json().get("retry_after_ms")
    except (ValueError, AttributeError):
        return None
    return float(wait_ms) / 1000 if isinstance(wait_ms, (int, float)) and wait_ms >= 0 else None


def _mentions(question: str, category: str) -> bool:
    import re

    return bool(category) and re.search(rf"(?<![A-Za-z]){re.escape(category)}(?![A-Za-z])", question,
                                        re.IGNORECASE) is not None


def _classify(trial: Mapping[str, Any], manifest: Mapping[str, _Stimulus]) -> tuple[str, str, str, int, str]:
    """(kind, condition, target_side, eps, source) of a trial as the browser sees it, via the manifest."""
    ids = []
    for side in ("left", "right"):
        name = str(trial[side]).rsplit("/", 1)[-1].removesuffix(".png")
        if name not in manifest:
            raise ValueError(f"image {name} of trial {trial['index']} is not in the stimulus set's manifest: "
                             f"is --set the set this experiment was created from?")
        ids.append(manifest[name])
    left, right = ids
    question = str(trial["question"])
    if left.condition == "clean" and right.condition == "clean":
        asked_left = _mentions(question, left.category) and not _mentions(question, right.category)
        return ("practice" if trial.get("practice") else "catch", "catch", "left" if asked_left else "right", 0,
                left.source)
    adversarial = [side for side, s in (("left", left), ("right", right)) if s.condition == "adversarial"]
    if len(adversarial) == 2:
        side = "left" if _mentions(question, left.target) and not _mentions(question, right.target) else "right"
        condition = "targets"
    elif len(adversarial) == 1:
        side = adversarial[0]
        other = right if side == "left" else left
        condition = f"vs_{other.condition}"
    else:
        raise ValueError(f"trial {trial['index']} shows no adversarial image: cannot tell the target side")
    chosen = left if side == "left" else right
    return ("practice" if trial.get("practice") else "main", condition, side, chosen.eps, chosen.source)


def simulate_study(
    slug: str,
    n_participants: int,
    bias: BiasSpec,
    *,
    set_dir: str | Path,
    url: str = "http://127.0.0.1:5000",
    participant_sd: float = 0.3,
    image_sd: float = 0.3,
    catch_accuracy: float = 0.97,
    seed: int = 0,
    concurrency: int = 4,
    timeout: float = 30.0,
    progress: bool = False,
    session_factory: Any = None,
) -> dict[str, Any]:
    """Synthetic participants take study ``slug`` through the participant HTTP API.

    Each participant starts (with PROLIFIC_PID ``sim-<seed>-<i>``, so re-running
    with the same seed resumes rather than duplicates), consents, passes the
    browser check, answers every trial in order with an idempotency key, and
    finishes. The browser is never told which image carries the target, so the
    synthetic participant looks the images up in the stimulus set's manifest
    (``set_dir``) and chooses the target with probability
    ``logistic(beta[condition, eps] + u_participant + w_image)``, ``beta`` solved so
    that the population-average rate is ``bias`` (see the module docstring); catch
    trials are answered correctly with ``catch_accuracy``. Returns counts, timing
    and the truth.
    """
    import time
    from concurrent.futures import ThreadPoolExecutor, as_completed
    from uuid import uuid4

    import requests
    from tqdm.auto import tqdm

    from advbias.errors import CLIError

    if n_participants < 1:
        raise ValueError("--participants must be at least 1")
    manifest = _read_manifest(Path(set_dir))
    by_pixels = _pixel_index(Path(set_dir), manifest)
    seen_urls: dict[str, str] = {}
    total_sd = math.hypot(participant_sd, image_sd)
    sources = sorted({s.source for s in manifest.values()})
    image_rng = np.random.default_rng([seed, 1])
    image_effect = dict(zip(sources, image_rng.normal(0.0, image_sd, len(sources)) if image_sd > 0
                            else np.zeros(len(sources))))
    beta_cache: dict[tuple[str, int], float] = {}
    base = url.rstrip("/")
    make_session = session_factory or requests.Session

    def call(http: Any, method: str, path: str, body: Any = None) -> Any:
        attempt = 0
        busy_until = time.monotonic() + 120.0
        while attempt < 4:
            try:
                reply = http.request(method, base + path, json=body, timeout=timeout)
            except requests.RequestException as exc:
                if attempt == 3:
                    raise CLIError(f"cannot reach {base}: {exc.__class__.__name__}: {exc}") from None
                attempt += 1
                time.sleep(0.5 * attempt)
                continue
            wait = _busy_wait(reply)
            if wait is not None and time.monotonic() + wait < busy_until:
                time.sleep(wait)  # many participants starting at once: come back when the server says
                continue
            attempt += 1
            if reply.status_code >= 500 and attempt < 4:
                time.sleep(0.5 * attempt)
                continue
            try:
                payload = reply.json()
            except ValueError:
                payload = {"error": reply.text[:200]}
            if reply.status_code >= 400:
                raise CLIError(f"{method} {path.split('?')[0]} answered {reply.status_code}: "
                               f"{payload.get('error', payload) if isinstance(payload, dict) else payload}")
            return payload
        raise CLIError(f"{method} {path} kept failing")  # pragma: no cover

    def identify(http: Any, image_url: str) -> str:
        """The stimulus id of a delivered image, recognised by its pixels (cached per URL)."""
        if image_url not in seen_urls:
            reply = http.request("GET", base + image_url, timeout=timeout)
            if reply.status_code != 200:
                raise CLIError(f"GET {image_url} answered {reply.status_code}")
            key = _pixel_key(reply.content)
            if key not in by_pixels:
                raise CLIError(f"image {image_url} is not in the stimulus set: is --set the set this experiment "
                               "was created from?")
            seen_urls[image_url] = by_pixels[key]
        return seen_urls[image_url]

    def beta_for(condition: str, eps: int) -> float:
        key = (condition, eps)
        if key not in beta_cache:
            beta_cache[key] = conditional_logit(bias_for(bias, condition, eps), total_sd)
        return beta_cache[key]

    def run_one(index: int) -> dict[str, Any]:
        rng = np.random.default_rng([seed, 2, index])
        u = float(rng.normal(0.0, participant_sd)) if participant_sd > 0 else 0.0
        http = make_session()
        answered = 0
        try:
            state = call(http, "POST", f"/api/v1/experiments/{slug}/participants",
                         {"prolific_pid": f"sim-{seed}-{index}", "study_id": "advbias-simulate",
                          "session_id": uuid4().hex[:16]})
            token = state["token"]
            if state["status"] != "in_progress":
                return {"status": state["status"], "answered": 0}
            call(http, "POST", f"/api/v1/participants/{token}/consent", {"consent": True})
            state = call(http, "POST", f"/api/v1/participants/{token}/browser-check",
                         {"window_width": 1280, "window_height": 800, "screen_width": 1920, "screen_height": 1080,
                          "device_pixel_ratio": 1.0, "refresh_hz": 60.0, "user_agent": "advbias-simulate",
                          "fullscreen": True})
            clock = 1000.0
            next_index = state["next_index"]
            while next_index < state["n_trials"]:
                page = call(http, "GET", f"/api/v1/participants/{token}/trials?start={next_index}&count=500")
                if not page["trials"]:
                    break
                for trial in page["trials"]:
                    named = {**trial, "left": identify(http, trial["left"]), "right": identify(http, trial["right"])}
                    kind, condition, target_side, eps, source = _classify(named, manifest)
                    if condition == "catch":
                        p_target = catch_accuracy
                    else:
                        p_target = float(_logistic(beta_for(condition, eps) + u + image_effect.get(source, 0.0)))
                    chose_target = rng.random() < p_target
                    response = target_side if chose_target else ("left" if target_side == "right" else "right")
                    rt = float(850.0 * math.exp(rng.normal(0.0, 0.35)))
                    clock += rt + 1500.0
                    call(http, "POST", f"/api/v1/participants/{token}/responses",
                         {"trial_id": trial["id"], "idempotency_key": uuid4().hex, "response": response,
                          "response_source": "key", "rt_ms": round(rt, 1), "onset_frame_ms": round(clock, 3),
                          "fullscreen": True, "blurred": False, "blur_events": 0})
                    answered += 1
                    next_index = trial["index"] + 1
            state = call(http, "POST", f"/api/v1/participants/{token}/finish",
                         {"text": "synthetic participant (advbias simulate)"})
            return {"status": state["status"], "answered": answered}
        finally:
            http.close()

    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    bar = tqdm(total=n_participants, desc="participants", disable=not progress, unit="participant")
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(run_one, i) for i in range(n_participants)]
        try:
            for future in as_completed(futures):
                results.append(future.result())
                bar.update()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            bar.close()
    seconds = time.perf_counter() - started
    answered = sum(r["answered"] for r in results)
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "experiment": slug,
        "participants": n_participants,
        "statuses": statuses,
        "trials_answered": answered,
        "seconds": round(seconds, 3),
        "responses_per_second": round(answered / seconds, 1) if seconds > 0 else math.nan,
        "truth": {
            "bias": {f"{c}:{e}": bias_for(bias, c, e) for c, e in sorted(beta_cache)},
            "logit": {f"{c}:{e}": b for (c, e), b in sorted(beta_cache.items())},
            "participant_sd": participant_sd,
            "image_sd": image_sd,
            "catch_accuracy": catch_accuracy,
            "seed": seed,
        },
    }
