"""Synthetic data with a known truth: the generative model and an offline export simulator.

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
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

import numpy as np

from advbias.errors import InputError
from advbias.export import COLUMNS as EXPORT_COLUMNS
from advbias.manifest import pair_key as manifest_pair_key
from advbias.trials import MAIN_TRIAL_TYPES, RULES

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

BiasSpec = Union[float, Mapping[Any, Any]]

DEFAULT_EPS: tuple[int, ...] = (2, 4, 8, 16)
DEFAULT_CATEGORIES: tuple[str, str] = ("cat", "dog")


def logistic(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(64)
_GH_WEIGHTS = _GH_WEIGHTS / _GH_WEIGHTS.sum()


def marginal_probability(beta: float, sd: float) -> float:
    """``E[logistic(beta + b)]`` for ``b ~ N(0, sd^2)`` (64-point Gauss-Hermite)."""
    return float(np.sum(_GH_WEIGHTS * logistic(beta + sd * _GH_NODES)))


def conditional_logit(bias: float, sd: float) -> float:
    """The log-odds ``beta`` whose population-average probability is ``bias``.

    With no random-effect variance this is ``logit(bias)``; with variance the
    subject-specific effect is larger in magnitude than the marginal one.
    """
    from scipy.optimize import brentq

    if not 0.0 < bias < 1.0:
        raise InputError(f"bias must be strictly between 0 and 1, got {bias}")
    if sd <= 0:
        return math.log(bias / (1.0 - bias))
    return float(brentq(lambda b: marginal_probability(b, sd) - bias, -40.0, 40.0, xtol=1e-12))


def parse_bias(text: str) -> BiasSpec:
    """Parse ``0.55`` or a per-budget ``2:0.52,4:0.55,8:0.6`` from the command line."""
    text = text.strip()
    try:
        if ":" not in text and "=" not in text:
            value = float(text)
            check_probability(value)
            return value
        spec: dict[int, float] = {}
        for part in text.split(","):
            key, _, value = part.replace("=", ":").partition(":")
            spec[int(key)] = float(value)
            check_probability(spec[int(key)])
        return spec
    except ValueError as exc:
        raise InputError(f"--bias must be a probability like 0.55 or per budget like 2:0.52,4:0.55 ({exc})") from None


def check_probability(value: float) -> None:
    if not 0.0 < value < 1.0:
        raise InputError(f"{value} is not strictly between 0 and 1")


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
    raise InputError(f"the bias specification gives no value for condition {condition!r} at eps {eps}")


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


@dataclass
class _Cells:
    """The design's cells (condition index, budget) with their truth on both scales."""

    conditions: tuple[str, ...]
    eps: tuple[int, ...]
    cells: list[tuple[int, int]]
    marginal: dict[tuple[str, int], float]
    beta: dict[tuple[str, int], float]

    @classmethod
    def build(cls, bias: BiasSpec, conditions: Sequence[str], eps: Sequence[int], total_sd: float) -> "_Cells":
        eps = tuple(int(e) for e in eps)
        conditions = tuple(conditions)
        unknown = set(conditions) - set(MAIN_TRIAL_TYPES)
        if unknown or not conditions or not eps:
            raise InputError(f"conditions must be among {', '.join(MAIN_TRIAL_TYPES)} (got {conditions})")
        cells = [(c, e) for c in range(len(conditions)) for e in eps]
        marginal = {(conditions[c], e): bias_for(bias, conditions[c], e) for c, e in cells}
        for value in marginal.values():
            check_probability(value)
        beta = {key: conditional_logit(p, total_sd) for key, p in marginal.items()}
        return cls(conditions, eps, cells, marginal, beta)


def _roles(draw: np.ndarray, inattentive: float, distracted: float) -> np.ndarray:
    """Per participant: 0 attentive, 1 inattentive (answers at random, fast), 2 distracted."""
    role = np.zeros(len(draw), dtype=np.int8)
    role[draw < inattentive] = 1
    role[(draw >= inattentive) & (draw < inattentive + distracted)] = 2
    return role


def _sequence(rng: np.random.Generator, design: _Cells, n: int, n_trials: int, n_images: int, n_catch: int,
              n_practice: int) -> dict[str, np.ndarray]:
    """Kind, condition, budget, fixed log-odds and source image of every trial, (n, total) arrays.

    Main trials repeat the cells as evenly as possible, shuffled per participant; each
    participant cycles through a private permutation of the images; practice trials
    come first, then main and catch trials interleaved at random.
    """
    cells = design.cells
    reps = np.full(len(cells), n_trials // len(cells))
    reps[: n_trials % len(cells)] += 1
    cell = np.repeat(np.arange(len(cells)), reps)[rng.random((n, n_trials)).argsort(axis=1)]
    cell_cond = np.array([c for c, _ in cells])[cell]
    cell_eps = np.array([e for _, e in cells])[cell]
    cell_beta = np.array([design.beta[(design.conditions[c], e)] for c, e in cells])[cell]
    perm = rng.random((n, n_images)).argsort(axis=1)
    main_source = perm[:, np.arange(n_trials) % n_images]
    top = max(design.eps)
    practice_source = rng.integers(0, n_images, (n, n_practice))
    catch_source = rng.integers(0, n_images, (n, n_catch))

    body = n_trials + n_catch
    is_catch = np.zeros((n, body), dtype=bool)
    if n_catch:
        slots = rng.random((n, body)).argsort(axis=1)[:, :n_catch]
        np.put_along_axis(is_catch, slots, True, axis=1)
    main_pos = np.clip(np.cumsum(~is_catch, axis=1) - 1, 0, n_trials - 1)
    catch_pos = np.clip(np.cumsum(is_catch, axis=1) - 1, 0, max(n_catch - 1, 0))
    rows = np.arange(n)[:, None]

    def join(practice: Any, catch: Any, main: np.ndarray) -> np.ndarray:
        return np.concatenate([np.broadcast_to(practice, (n, n_practice)),
                               np.where(is_catch, catch, main[rows, main_pos])], axis=1)

    return {
        "kind": join(0, 2, np.ones((n, n_trials), int)),
        "condition": join(0, -1, cell_cond),
        "eps": join(top, 0, cell_eps),
        "eta": join(design.beta[(design.conditions[0], top)], 0.0, cell_beta),
        "source": np.concatenate([practice_source, np.where(
            is_catch, catch_source[rows, catch_pos] if n_catch else 0, main_source[rows, main_pos])], axis=1),
    }


def _behaviour(rng: np.random.Generator, role: np.ndarray, total: int) -> dict[str, np.ndarray]:
    """Response times, fullscreen and window-blur records; inattentive people are fast, distracted ones leave."""
    n = len(role)
    median_rt = np.where(role == 1, 190.0, np.exp(rng.normal(math.log(850.0), 0.25, n)))
    rt = median_rt[:, None] * np.exp(rng.normal(0.0, 0.35, (n, total)))
    fullscreen = np.ones((n, total), dtype=np.int8)
    blur_events = np.zeros((n, total), dtype=np.int64)
    distracted_rows = role == 2
    if distracted_rows.any():
        k = int(distracted_rows.sum())
        fullscreen[distracted_rows] = (rng.random((k, total)) > 0.4).astype(np.int8)
        blur_events[distracted_rows] = rng.poisson(0.6, (k, total))
    return {"rt_ms": rt, "fullscreen": fullscreen, "blur_events": blur_events,
            "blurred": (blur_events > 0).astype(np.int8)}


def _quitters(rng: np.random.Generator, n: int, total: int, incomplete: float) -> tuple[np.ndarray, np.ndarray]:
    """(status per participant: 0 completed, 1 in_progress; which trials were answered)."""
    status = np.zeros(n, dtype=np.int8)
    keep = np.ones((n, total), dtype=bool)
    quitters = rng.random(n) < incomplete
    if quitters.any():
        status[quitters] = 1
        stop = (rng.uniform(0.2, 0.8, n) * total).astype(int)
        keep &= ~(quitters[:, None] & (np.arange(total)[None, :] >= stop[:, None]))
    return status, keep


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
        raise InputError("n_participants and n_trials must be at least 1")
    if n_images < 1:
        raise InputError("n_images must be at least 1")
    design = _Cells.build(bias, conditions, eps, math.hypot(participant_sd, image_sd))
    rng = np.random.default_rng(seed)
    n = n_participants
    u = rng.normal(0.0, participant_sd, n) if participant_sd > 0 else np.zeros(n)
    w = rng.normal(0.0, image_sd, n_images) if image_sd > 0 else np.zeros(n_images)
    role = _roles(rng.random(n), inattentive, distracted)
    seq = _sequence(rng, design, n, n_trials, n_images, n_catch, n_practice)
    total = n_practice + n_trials + n_catch
    eta = seq["eta"] + u[:, None] + w[seq["source"]]
    target_left = rng.random((n, total)) < 0.5
    p_left = logistic(np.where(target_left, 1.0, -1.0) * eta + side_bias)
    p_left = np.where(seq["kind"] == 2, np.where(target_left, catch_accuracy, 1.0 - catch_accuracy), p_left)
    p_left = np.where(role[:, None] == 1, 0.5, p_left)
    response_left = rng.random((n, total)) < p_left
    question_first = rng.random((n, total)) < 0.5
    behaviour = _behaviour(rng, role, total)
    status, keep = _quitters(rng, n, total, incomplete)
    take = keep.ravel()

    def flat(a: np.ndarray) -> np.ndarray:
        return np.asarray(np.broadcast_to(a, (n, total))).ravel()[take]

    truth = {
        "bias": {f"{c}:{e}": p for (c, e), p in design.marginal.items()},
        "logit": {f"{c}:{e}": b for (c, e), b in design.beta.items()},
        "participant_sd": participant_sd, "image_sd": image_sd, "side_bias": side_bias,
        "catch_accuracy": catch_accuracy, "seed": seed,
    }
    return SimulatedTrials(
        participant=flat(np.arange(n)[:, None]), trial_index=flat(np.arange(total)[None, :]), kind=flat(seq["kind"]),
        condition=flat(seq["condition"]), eps=flat(seq["eps"]), source=flat(seq["source"]),
        target_left=flat(target_left), response_left=flat(response_left), correct=flat(response_left == target_left),
        question_first=flat(question_first), rt_ms=flat(behaviour["rt_ms"]), fullscreen=flat(behaviour["fullscreen"]),
        blurred=flat(behaviour["blurred"]), blur_events=flat(behaviour["blur_events"]), status=status,
        kind_of_participant=role, conditions=design.conditions, truth=truth, participant_effects=u, image_effects=w,
    )


def _hex(text: str, length: int = 64) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _stimulus_columns(sim: SimulatedTrials, categories: tuple[str, str], seed: int | None,
                      n_images: int) -> dict[str, np.ndarray]:
    """What each trial showed: condition, question, images and their ids, as the server would record them."""
    a, b = categories
    sources = np.array([f"simulated/img{j:04d}.png" for j in range(n_images)], dtype=object)
    source_sha = [_hex(f"{seed}:{s}") for s in sources]
    cond_names = np.array(list(sim.conditions) + ["catch"], dtype=object)
    is_catch = sim.kind == 2
    condition = np.where(is_catch, "catch", cond_names[np.where(sim.condition < 0, len(sim.conditions), sim.condition)])
    question_target = np.where(sim.question_first, a, b).astype(object)
    other = np.where(sim.question_first, b, a).astype(object)
    eps = sim.eps.astype(np.int64)
    pair_key = np.array([manifest_pair_key(source_sha[s], a, b, e) for s, e in zip(sim.source, eps)], dtype=object)
    pair_key[is_catch] = ""
    # What the non-target image was perturbed toward, by condition.
    foil = np.where(is_catch, other, np.where(condition == "targets", other, "")).astype(object)
    foil_kind = np.select([condition == t.name for t in RULES], [t.other for t in RULES], "clean").astype(object)
    target_kind = np.where(is_catch, "clean", "adversarial").astype(object)
    target_id = np.array([_hex(f"{sid}:adversarial:{q}:{e}") for sid, q, e in zip(sim.source, question_target, eps)],
                         dtype=object)
    foil_id = np.array([_hex(f"{sid}:{fk}:{o}:{e}") for sid, fk, o, e in zip(sim.source, foil_kind, other, eps)],
                       dtype=object)
    if is_catch.any():
        # Catch trials show two clean photos of different categories.
        target_id[is_catch] = [_hex(f"{sid}:clean:{q}") for sid, q in zip(sim.source[is_catch], question_target[is_catch])]
        foil_id[is_catch] = [_hex(f"{sid}:clean:{o}") for sid, o in zip(sim.source[is_catch], other[is_catch])]
    left = sim.target_left
    left_target = np.where(left, question_target, foil).astype(object)
    right_target = np.where(left, foil, question_target).astype(object)
    return {
        "condition": condition,
        "question": np.array([f"Which image is more {q}-like?" for q in question_target], dtype=object),
        "question_target": question_target, "eps": eps, "source": sources[sim.source], "pair_key": pair_key,
        "left_stimulus_id": np.where(left, target_id, foil_id), "right_stimulus_id": np.where(left, foil_id, target_id),
        "left_target": left_target, "right_target": right_target,
        "left_condition": np.where(left, target_kind, foil_kind).astype(object),
        "right_condition": np.where(left, foil_kind, target_kind).astype(object),
        "target_side": np.where(left, "left", "right").astype(object),
        "response": np.where(sim.response_left, "left", "right").astype(object),
        "chosen_target": np.where(sim.response_left, left_target, right_target),
    }


def _timing_columns(sim: SimulatedTrials) -> dict[str, Any]:
    """requestAnimationFrame-style onsets (cumulative RT plus an inter-trial gap) and server receipt times."""
    import pandas as pd

    p = sim.participant
    onset = np.zeros(len(p))
    start = 0
    gaps = sim.rt_ms + 1500.0
    for stop in list(np.flatnonzero(np.diff(p)) + 1) + [len(p)]:
        onset[start:stop] = 1000.0 + np.concatenate([[0.0], np.cumsum(gaps[start:stop])[:-1]])
        start = stop
    base = pd.Timestamp("2024-01-01T09:00:00Z") + pd.to_timedelta(p * 3600.0, unit="s")
    received = (base + pd.to_timedelta((onset + sim.rt_ms) / 1000.0, unit="s")).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # An honest browser's answer reaches the server after the RT, the inter-trial gap and some network time
    # (taken when the export contract carries ``server_rt_ms``; columns it does not list are dropped).
    server_rt = np.round(gaps + 20.0 + 5.0 * (sim.trial_index % 7), 1)
    return {"rt_ms": np.round(sim.rt_ms, 1), "presentation_ms": np.nan, "onset_frame_ms": np.round(onset, 3),
            "offset_frame_ms": np.nan, "refresh_hz": 60.0, "server_received_at": np.asarray(received, dtype=object),
            "server_rt_ms": server_rt}


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
    per ``"condition:eps"``, the random-effect SDs) is in ``frame.attrs["truth"]``;
    ``frame.attrs["image_effects"]`` maps each source to its drawn effect and
    ``frame.attrs["participant_roles"]`` maps each participant id to ``attentive``,
    ``inattentive`` or ``distracted``.
    """
    import pandas as pd

    sim = simulate_trials(
        n_participants, n_trials, bias, participant_sd, image_sd, eps=eps, conditions=conditions,
        n_images=n_images, n_catch=n_catch, n_practice=n_practice, catch_accuracy=catch_accuracy,
        side_bias=side_bias, inattentive=inattentive, incomplete=incomplete, distracted=distracted,
        seed=seed,
    )
    rng = np.random.default_rng(None if seed is None else seed + 7919)
    pids = np.array([_hex(f"{seed}:participant:{i}", 16) for i in range(n_participants)], dtype=object)
    p = sim.participant
    stimulus = _stimulus_columns(sim, categories, seed, n_images)
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
        "kind": np.array(["practice", "main", "catch"], dtype=object)[sim.kind],
        **stimulus,
        "chose_question_target": sim.correct.astype(np.int64),
        "response_source": np.where(rng.random(len(p)) < 0.9, "key", "click").astype(object),
        **_timing_columns(sim),
        "fullscreen": sim.fullscreen.astype(np.int64),
        "blurred": sim.blurred.astype(np.int64),
        "blur_events": sim.blur_events.astype(np.int64),
    }, columns=list(EXPORT_COLUMNS))
    for column in ("pair_key", "left_target", "right_target", "chosen_target"):
        frame[column] = frame[column].replace("", None)
    frame.attrs["truth"] = sim.truth
    frame.attrs["image_effects"] = {f"simulated/img{j:04d}.png": float(v) for j, v in enumerate(sim.image_effects)}
    roles = np.array(["attentive", "inattentive", "distracted"], dtype=object)[sim.kind_of_participant]
    frame.attrs["participant_roles"] = dict(zip(pids.tolist(), roles.tolist()))
    return frame
