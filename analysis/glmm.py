"""Logistic mixed-effects regression with crossed random effects (Laplace approximation).

The model, for trial (or aggregated cell) ``i`` with ``n_i`` trials and ``y_i`` successes::

    y_i ~ Binomial(n_i, logistic(eta_i)),   eta_i = x_i' beta + sum_f sigma_f * z_f(i) * v_f[g_f(i)]
    v_f ~ N(0, I)   (so the random effects are b_f = sigma_f * v_f ~ N(0, sigma_f^2))

``z_f = 1`` for a random intercept; a random slope of ``x`` by a factor is a further term
with ``z_f = x``, uncorrelated with the intercept (lme4's ``(1 | g) + (0 + x | g)``).

This is ``glmer(y ~ X + (1 | participant) + (1 | source), family = binomial)`` in
lme4 (Bates, Maechler, Bolker & Walker 2015), fitted the same way:

* For given standard deviations ``sigma`` the conditional modes of ``(beta, v)`` (``nagq=0``)
  or of ``v`` alone (``nagq=1``) are found by penalised iteratively reweighted least
  squares (Newton's method on ``-loglik + |v|^2 / 2``).
* The marginal likelihood is approximated by Laplace's method::

      deviance(sigma, beta) = -2 loglik(y | beta, v^) + |v^|^2 + log det(Lambda' Z' W Z Lambda + I)

  and minimised over ``sigma >= 0`` (``nagq=0``: with ``beta`` at the joint mode, as
  ``glmer(nAGQ = 0)``) and then, for ``nagq=1`` (the default, as ``glmer``'s default),
  over ``(sigma, beta)`` together.
* Standard errors of ``beta`` come from the inverse of the joint Hessian of the
  penalised objective at the optimum (the ``beta`` block of ``H^{-1}``), Wald ``z`` tests
  and normal confidence intervals.

The random-effect dimension can be large (thousands of participants), so the
Hessian is never formed densely: the first grouping factor's block is diagonal
(every row belongs to exactly one of its levels) and is eliminated by a Schur
complement; only the remaining levels and ``beta`` form a dense matrix.

A fixed effect whose rows are all successes (or all failures) has no finite maximum
likelihood estimate; that term alone gets a Jeffreys prior (``separated_terms``,
:attr:`GLMMResult.penalized`), so the other terms keep their likelihood.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import linalg, optimize, special, stats

from advbias.errors import InputError


@dataclass
class GLMMResult:
    """A fitted logistic GLMM; everything on the log-odds scale."""

    terms: list[str]
    beta: np.ndarray
    cov: np.ndarray
    sd: dict[str, float]
    deviance: float
    n_obs: int
    n_groups: dict[str, int]
    converged: bool
    nagq: int
    evaluations: int
    random_effects: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    #: Terms fitted with a Jeffreys prior because of complete separation: term -> why.
    penalized: dict[str, str] = field(default_factory=dict)

    @property
    def std_err(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.cov), 0.0, None))

    def summary(self, level: float = 0.95) -> list[dict[str, float | str]]:
        """One dict per fixed effect: estimate, std_err, z, two-sided p, Wald CI."""
        zcrit = stats.norm.ppf(0.5 + level / 2.0)
        rows = []
        for term, est, se in zip(self.terms, self.beta, self.std_err):
            z = est / se if se > 0 else math.nan
            rows.append({
                "term": term, "estimate": float(est), "std_err": float(se), "z": float(z),
                "p": float(2.0 * stats.norm.sf(abs(z))) if se > 0 else math.nan,
                "ci_low": float(est - zcrit * se), "ci_high": float(est + zcrit * se),
            })
        return rows


def separated_terms(y: np.ndarray, n: np.ndarray, X: np.ndarray) -> dict[int, str]:
    """Columns whose log-odds are infinite: an indicator column whose rows are all successes or all failures.

    (The maximum likelihood estimate of such a term does not exist; any finite number
    reported would be an artefact of when the optimiser stopped.) Returns
    ``{column: description}``. Only a column that alone determines its rows' fixed
    part is checked (cell-means or intercept designs), which is how the analysis
    codes budgets.
    """
    found: dict[int, str] = {}
    for j in range(X.shape[1]):
        column = X[:, j]
        if not np.all((column == 0) | (column == 1)):
            continue
        rows = column == 1
        if not rows.any():
            continue
        others = np.delete(X[rows], j, axis=1)
        if others.size and np.any(others != 0):
            continue
        successes, trials = float(y[rows].sum()), float(n[rows].sum())
        if successes == 0 or successes == trials:
            found[j] = (f"complete separation: every one of the {int(trials)} answers is "
                        f"{'a success' if successes else 'a failure'}")
    return found


class _Problem:
    """Data and Hessian assembly for one fit."""

    def __init__(self, y: np.ndarray, n: np.ndarray, X: np.ndarray, codes: list[np.ndarray], sizes: list[int],
                 penalized: Sequence[int] = (), z: Sequence[np.ndarray | None] | None = None):
        self.y, self.n, self.X = y, n, X
        # Each factor's covariate: ones for a random intercept, the variable for a random slope.
        self.z = [np.ones(len(y)) if c is None else np.asarray(c, dtype=float) for c in (z or [None] * len(codes))]
        self.penalized = np.asarray(list(penalized), dtype=np.int64)
        self.codes, self.sizes = codes, sizes
        self.k = X.shape[1]
        self.q = sum(sizes)
        # Flat indices for the cross-products of the first (diagonal) factor with the others.
        self.pair_index = [codes[0] * s + c for c, s in zip(codes[1:], sizes[1:])]
        self.cross_index = [
            [codes[a] * sizes[b] + codes[b] for b in range(len(codes))] for a in range(len(codes))
        ]

    def eta(self, beta: np.ndarray, v: list[np.ndarray], sigma: np.ndarray) -> np.ndarray:
        out = self.X @ beta
        for f, code in enumerate(self.codes):
            out = out + sigma[f] * self.z[f] * v[f][code]
        return out

    def loglik(self, eta: np.ndarray) -> float:
        # y*eta - n*log(1+exp(eta)), computed stably.
        return float(np.sum(self.y * eta - self.n * np.logaddexp(0.0, eta)))

    def prior(self, beta: np.ndarray) -> float:
        """Log of the Jeffreys prior on each penalised term: half a success and half a failure (log-F(1, 1))."""
        b = beta[self.penalized]
        return float(np.sum(0.5 * b - np.logaddexp(0.0, b)))

    def blocks(self, eta: np.ndarray, v: list[np.ndarray], sigma: np.ndarray, with_beta: bool,
               beta: np.ndarray | None = None):
        """Gradient and Hessian blocks of ``-loglik + |v|^2/2``.

        Returns ``(g0, gD, A, B, C)``: ``A`` is the diagonal of the first factor's
        block, ``B`` its coupling to the dense unknowns ``D = (v_1.., beta)`` and
        ``C`` the dense block.
        """
        mu = special.expit(eta)
        w = self.n * mu * (1.0 - mu)
        r = self.y - self.n * mu
        s0, c0, q0, z0 = sigma[0], self.codes[0], self.sizes[0], self.z[0]
        g0 = -s0 * np.bincount(c0, r * z0, q0) + v[0]
        A = s0 * s0 * np.bincount(c0, w * z0 * z0, q0) + 1.0
        dense_sizes = list(self.sizes[1:]) + ([self.k] if with_beta else [])
        m = sum(dense_sizes)
        B = np.zeros((q0, m))
        C = np.zeros((m, m))
        gD = np.zeros(m)
        offsets = np.concatenate([[0], np.cumsum(dense_sizes)]).astype(int)
        for j in range(1, len(self.codes)):
            sj, cj, qj, zj = sigma[j], self.codes[j], self.sizes[j], self.z[j]
            wj = w * zj
            o = offsets[j - 1]
            gD[o:o + qj] = -sj * np.bincount(cj, r * zj, qj) + v[j]
            B[:, o:o + qj] = s0 * sj * np.bincount(self.pair_index[j - 1], wj * z0, q0 * qj).reshape(q0, qj)
            C[o:o + qj, o:o + qj] += np.diag(sj * sj * np.bincount(cj, wj * zj, qj) + 1.0)
            for l in range(j + 1, len(self.codes)):
                ol, ql = offsets[l - 1], self.sizes[l]
                block = sj * sigma[l] * np.bincount(self.cross_index[j][l], wj * self.z[l], qj * ql).reshape(qj, ql)
                C[o:o + qj, ol:ol + ql] = block
                C[ol:ol + ql, o:o + qj] = block.T
            if with_beta:
                ob = offsets[-2]
                cross = sj * np.stack([np.bincount(cj, wj * self.X[:, c], qj) for c in range(self.k)], axis=1)
                C[o:o + qj, ob:] = cross
                C[ob:, o:o + qj] = cross.T
        if with_beta:
            ob = offsets[-2]
            gD[ob:] = -(self.X.T @ r)
            B[:, ob:] = s0 * np.stack([np.bincount(c0, w * z0 * self.X[:, c], q0) for c in range(self.k)], axis=1)
            C[ob:, ob:] = (self.X * w[:, None]).T @ self.X
            if self.penalized.size and beta is not None:
                mu_b = special.expit(beta[self.penalized])
                gD[ob + self.penalized] -= 0.5 - mu_b
                C[ob + self.penalized, ob + self.penalized] += mu_b * (1.0 - mu_b)
        return g0, gD, A, B, C

    @staticmethod
    def schur(A: np.ndarray, B: np.ndarray, C: np.ndarray) -> np.ndarray:
        return C - (B / A[:, None]).T @ B


class _State:
    """Current conditional modes, carried between evaluations as warm starts."""

    def __init__(self, problem: _Problem, beta: np.ndarray):
        self.beta = beta.copy()
        self.v = [np.zeros(s) for s in problem.sizes]


def _pirls(problem: _Problem, sigma: np.ndarray, state: _State, with_beta: bool,
           tol: float = 1e-10, max_iter: int = 60) -> tuple[float, float, bool]:
    """Newton iterations for the conditional modes; returns (penalised deviance, log det, converged).

    The penalised deviance is ``-2 loglik + |v|^2``; the log determinant is that of
    the random-effect block of the Hessian (the Laplace correction).
    """
    def objective(beta: np.ndarray, v: list[np.ndarray]) -> float:
        eta = problem.eta(beta, v, sigma)
        return -2.0 * (problem.loglik(eta) + problem.prior(beta)) + sum(float(x @ x) for x in v)

    current = objective(state.beta, state.v)
    converged = False
    for _ in range(max_iter):
        eta = problem.eta(state.beta, state.v, sigma)
        g0, gD, A, B, C = problem.blocks(eta, state.v, sigma, with_beta, state.beta)
        S = problem.schur(A, B, C)
        if S.size:
            rhs = -gD + (B / A[:, None]).T @ g0
            try:
                factor = linalg.cho_factor(S, lower=True, check_finite=False)
                dD = linalg.cho_solve(factor, rhs, check_finite=False)
            except linalg.LinAlgError:
                dD = linalg.lstsq(S, rhs, check_finite=False)[0]
        else:
            dD = np.zeros(0)
        d0 = (-g0 - B @ dD) / A
        step = 1.0
        while True:
            v_new = [state.v[0] + step * d0]
            o = 0
            for size in problem.sizes[1:]:
                v_new.append(state.v[len(v_new)] + step * dD[o:o + size])
                o += size
            beta_new = state.beta + step * dD[o:] if with_beta else state.beta
            candidate = objective(beta_new, v_new)
            if candidate <= current + 1e-12 * max(1.0, abs(current)) or step < 1e-6:
                break
            step /= 2.0
        change = max(float(np.max(np.abs(d0))) if d0.size else 0.0,
                     float(np.max(np.abs(dD))) if dD.size else 0.0) * step
        state.v, state.beta = v_new, beta_new
        decrease = current - candidate
        current = candidate
        if change < tol or (0.0 <= decrease < tol * 1e-2 and change < 1e-6):
            converged = True
            break
    # Laplace correction at the mode: log det of the random-effect block.
    eta = problem.eta(state.beta, state.v, sigma)
    _, _, A, B, C = problem.blocks(eta, state.v, sigma, with_beta=False)
    logdet = float(np.sum(np.log(A)))
    if C.size:
        S = problem.schur(A, B, C)
        logdet += 2.0 * float(np.sum(np.log(np.diag(linalg.cholesky(S, lower=True, check_finite=False)))))
    return current, logdet, converged


def _encode(y: np.ndarray, n: np.ndarray, X: np.ndarray, groups: Mapping[str, np.ndarray],
            slopes: Mapping[str, np.ndarray], penalized: Sequence[int]) -> tuple[_Problem, list[str]]:
    """The problem with its random terms coded; the term with most levels first (the diagonal block).

    A random slope ``slopes[g] = x`` is the term ``sigma * x * v[level of g]``,
    uncorrelated with ``g``'s intercept (lme4's ``(1 | g) + (0 + x | g)``).
    """
    encoded = []
    for name, labels in groups.items():
        uniques, codes = np.unique(np.asarray(labels), return_inverse=True)
        encoded.append((name, codes.astype(np.int64), len(uniques), None))
        if name in slopes:
            encoded.append((f"{name}:slope", codes.astype(np.int64), len(uniques), np.asarray(slopes[name], float)))
    unknown = set(slopes) - set(groups)
    if unknown:
        raise ValueError(f"a random slope needs its grouping factor: {', '.join(sorted(unknown))}")
    encoded.sort(key=lambda item: -item[2])
    problem = _Problem(y, n, X, [e[1] for e in encoded], [e[2] for e in encoded], penalized, [e[3] for e in encoded])
    return problem, [e[0] for e in encoded]


class _Fitter:
    """The two stages of the fit (joint mode, then Laplace) sharing warm starts and an evaluation count."""

    def __init__(self, problem: _Problem, start_sd: float) -> None:
        self.problem = problem
        self.evaluations = 0
        self.last_ok = True  # whether the most recent inner solve converged (checked at the optimum)
        y, n, X = problem.y, problem.n, problem.X
        # Starting fixed effects: the pooled log-odds, as a least-squares fit of X.
        p0 = np.clip((y.sum() + 0.5) / (n.sum() + 1.0), 1e-6, 1 - 1e-6)
        self.state = _State(problem, np.linalg.lstsq(X, np.full(len(y), math.log(p0 / (1 - p0))), rcond=None)[0])
        self.start_sd = start_sd
        F = len(problem.sizes)
        self.bounds = [(0.0, 10.0)] * F  # SDs beyond 10 log-odds mean deterministic responding

    def _inner(self, sigma: np.ndarray, state: _State, with_beta: bool) -> float:
        self.evaluations += 1
        pen, logdet, self.last_ok = _pirls(self.problem, np.asarray(sigma, dtype=float), state, with_beta)
        return pen + logdet

    def joint(self) -> tuple[np.ndarray, np.ndarray, float, bool]:
        """``nagq=0``: minimise over ``sigma`` with ``beta`` at the joint conditional mode."""
        F = len(self.problem.sizes)
        fit = optimize.minimize(lambda sd: self._inner(sd, self.state, True), np.full(F, self.start_sd),
                                method="L-BFGS-B", bounds=self.bounds,
                                options={"ftol": 1e-12, "gtol": 1e-7, "eps": 1e-6, "maxiter": 200})
        sigma = np.clip(fit.x, 0.0, None)
        self._inner(sigma, self.state, True)
        return sigma, self.state.beta.copy(), float(fit.fun), bool(fit.success)

    def laplace(self, sigma: np.ndarray, beta: np.ndarray, deviance: float,
                converged: bool) -> tuple[np.ndarray, np.ndarray, float, bool]:
        """``nagq=1``: refine ``(sigma, beta)`` together on the Laplace deviance (lme4's default)."""
        F, k = len(sigma), len(beta)
        inner = _State(self.problem, beta)
        inner.v = [x.copy() for x in self.state.v]

        def deviance1(params: np.ndarray) -> float:
            inner.beta = params[F:]
            return self._inner(params[:F], inner, False)

        fit = optimize.minimize(deviance1, np.concatenate([sigma, beta]), method="L-BFGS-B",
                                bounds=self.bounds + [(None, None)] * k,
                                options={"ftol": 1e-13, "gtol": 1e-7, "eps": 1e-6, "maxiter": 500})
        if fit.fun <= deviance + 1e-6:
            sigma, beta, deviance = np.clip(fit.x[:F], 0.0, None), fit.x[F:].copy(), float(fit.fun)
            converged = converged and bool(fit.success)
        deviance1(np.concatenate([sigma, beta]))
        self.state = inner
        return sigma, beta, deviance, converged

    def covariance(self, sigma: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """The ``beta`` block of the inverse joint Hessian of the penalised objective at the optimum."""
        problem = self.problem
        eta = problem.eta(beta, self.state.v, sigma)
        _, _, A, B, C = problem.blocks(eta, self.state.v, sigma, with_beta=True, beta=beta)
        S = problem.schur(A, B, C)
        try:
            inv = linalg.cho_solve(linalg.cho_factor(S, lower=True), np.eye(S.shape[0]))
        except linalg.LinAlgError:
            raise InputError("the information matrix is singular (complete separation, or too little data for "
                             "this model)") from None
        return inv[-problem.k:, -problem.k:]


def _one_blas_thread() -> Any:
    """Run the fit's small dense algebra on one BLAS thread.

    The dense blocks are a few hundred rows at most; spreading them over threads costs
    more in synchronisation than it saves, and on a busy machine spinning BLAS threads
    made a fit up to 100x slower (a 152-row random-slope fit: 39 s against 0.4 s on two
    shared cores). threadpoolctl comes with scikit-learn (a pingouin dependency);
    without it nothing is limited.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def fit_logistic_glmm(
    y: np.ndarray,
    X: np.ndarray,
    groups: Mapping[str, np.ndarray],
    terms: Sequence[str] | None = None,
    trials: np.ndarray | None = None,
    nagq: int = 1,
    start_sd: float = 0.3,
    separation: str = "penalize",
    slopes: Mapping[str, np.ndarray] | None = None,
) -> GLMMResult:
    """Fit ``logit P(y) = X beta + random intercepts`` by maximum (Laplace) likelihood.

    ``y`` holds successes (0/1 for single trials, counts with ``trials`` for
    aggregated rows); ``groups`` maps each grouping factor's name to one label per
    row. ``nagq=0`` stops after the joint-mode fit (lme4's ``nAGQ = 0``); ``nagq=1``
    (default) refines to the full Laplace maximum likelihood (lme4's default).

    A term whose answers are all successes (or all failures) has no finite maximum
    likelihood estimate. With ``separation="penalize"`` (default) only that term gets
    a Jeffreys prior (half a success and half a failure; Firth's correction for a
    binomial proportion), so it has a finite, bias-reduced estimate and every other
    term keeps its likelihood; the penalised terms are listed in
    :attr:`GLMMResult.penalized`. ``separation="refuse"`` raises :class:`ValueError`.

    ``slopes`` adds uncorrelated random slopes: ``{"participant": x}`` is lme4's
    ``(0 + x | participant)``; its SD is reported as ``sd["participant:slope"]``.
    """
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError("X must be a matrix with one row per observation")
    n = np.ones_like(y) if trials is None else np.asarray(trials, dtype=float)
    if np.any(y < 0) or np.any(y > n):
        raise ValueError("successes must lie between 0 and the number of trials")
    if not groups:
        raise ValueError("at least one grouping factor is needed")
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise InputError("the fixed-effect design is rank deficient (a budget or condition with no trials?)")
    if separation not in ("penalize", "refuse") or nagq not in (0, 1):
        raise ValueError("separation must be 'penalize' or 'refuse' and nagq 0 or 1")
    terms = list(terms) if terms is not None else [f"x{j}" for j in range(X.shape[1])]
    separated = separated_terms(y, n, X)
    if separated and separation == "refuse":
        j, why = next(iter(separated.items()))
        raise InputError(f"{why} for {terms[j]}, so its log-odds is infinite")
    problem, names = _encode(y, n, X, groups, slopes or {}, sorted(separated))
    fitter = _Fitter(problem, start_sd)
    with _one_blas_thread():
        sigma, beta, deviance, converged = fitter.joint()
        if nagq == 1:
            sigma, beta, deviance, converged = fitter.laplace(sigma, beta, deviance, converged)
        cov = fitter.covariance(sigma, beta)
    return GLMMResult(
        terms=terms, beta=np.asarray(beta, dtype=float), cov=cov,
        sd={name: float(sigma[f]) for f, name in enumerate(names)},
        deviance=deviance, n_obs=int(n.sum()),
        n_groups={name: int(size) for name, size in zip(names, problem.sizes)},
        converged=converged and fitter.last_ok, nagq=nagq, evaluations=fitter.evaluations,
        random_effects={name: sigma[f] * fitter.state.v[f] for f, name in enumerate(names)},
        penalized={terms[j]: why for j, why in separated.items()},
    )
