"""Many small mixed-model fits at once: the primary test of a power simulation, vectorised over studies.

``advbias power`` simulates the declared primary test, the intercept of
``y ~ 1 + (1|participant) + (1|source)``, a thousand times per sample size. Fitting
each study with :func:`analysis.glmm.fit_logistic_glmm` (an optimiser per study) takes
a quarter of a second; here every study of a batch is fitted together with array
operations. The random effects, the intercept and the two variances are estimated by
Laplace-approximate EM: a Newton step for the conditional modes given the
variances (the participant block is diagonal, the images and the intercept form one
small dense block per study, solved by a batched Schur complement), then each
variance set to the mean of its modes' squares plus their posterior variances. The
posterior variances include the intercept's uncertainty, which makes the variances
REML-like (slightly larger than the maximum-likelihood ones). The Wald statistic is
then referred to a t distribution on ``min(participants, images) - 1`` degrees of
freedom, as ``primary.csv`` does. How well this matches the full fit, and the
false-positive rate and coverage it gives, are measured in ``docs/benchmarks.md``.
"""
from __future__ import annotations

import numpy as np
from scipy import special, stats


def fit_intercepts(successes: np.ndarray, counts: np.ndarray, iterations: int = 12,
                   start_sd: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(intercept, its standard error) per study, for ``(studies, participants, images)`` count arrays.

    Cells with no trials (``counts == 0``) carry no information and are allowed.
    """
    # The (studies x participants x images) arrays are held in single precision: the work is memory-bound, and
    # float32 halves it; the small per-study blocks (the Schur complement and its solve) stay in double precision.
    # Each study's p stays within the margin of the analysis's own mixed model (tests/test_analysis.py).
    y = np.asarray(successes, dtype=np.float32)
    n = np.asarray(counts, dtype=np.float32)
    S, P, M = n.shape
    pooled = (y.sum(axis=(1, 2)) + 0.5) / (n.sum(axis=(1, 2)) + 1.0)
    beta = np.log(pooled / (1.0 - pooled))
    a, c = np.zeros((S, P)), np.zeros((S, M))
    var_a = np.full(S, start_sd ** 2)
    var_c = np.full(S, start_sd ** 2)
    eye = np.eye(M + 1)
    for _ in range(iterations):
        eta = (beta[:, None, None] + a[:, :, None]).astype(np.float32) + c[:, None, :].astype(np.float32)
        mu = special.expit(eta)
        w = n * mu * (1.0 - mu)
        r = y - n * mu
        A = w.sum(axis=2) + 1.0 / var_a[:, None]                                     # (S, P)
        g_a = r.sum(axis=2) - a / var_a[:, None]
        g_q = np.concatenate([r.sum(axis=1) - c / var_c[:, None], r.sum(axis=(1, 2))[:, None]], axis=1)
        Bq = np.concatenate([w, w.sum(axis=2, keepdims=True)], axis=2)              # (S, P, M + 1)
        Dq = np.zeros((S, M + 1, M + 1))
        wc = w.sum(axis=1)
        Dq[:, np.arange(M), np.arange(M)] = wc + 1.0 / var_c[:, None]
        Dq[:, :M, M] = Dq[:, M, :M] = wc
        Dq[:, M, M] = w.sum(axis=(1, 2))
        scaled = Bq / A[:, :, None]
        # The one O(studies x participants x images^2) product, in single precision (its terms are positive and
        # summed over participants: float32's 1e-7 relative error is far below the Monte Carlo error).
        wf = w.astype(np.float32)
        core = np.matmul((wf / A[:, :, None].astype(np.float32)).transpose(0, 2, 1), wf).astype(float)
        schur = Dq - np.concatenate([np.concatenate([core, np.einsum("spj,sp->sj", scaled[:, :, :M], Bq[:, :, M])[:, :, None]], axis=2),
                                     np.einsum("spi,sp->si", scaled, Bq[:, :, M])[:, None, :]], axis=1)
        inv = np.linalg.solve(schur, np.broadcast_to(eye, schur.shape))
        rhs = g_q - np.einsum("spi,sp->si", scaled, g_a)
        dq = np.einsum("sij,sj->si", inv, rhs)
        da = (g_a - np.einsum("spi,si->sp", Bq, dq)) / A
        step = np.minimum(1.0, 5.0 / np.maximum(np.abs(dq).max(axis=1), np.abs(da).max(axis=1)).clip(1e-12))
        a = a + step[:, None] * da
        c = c + step[:, None] * dq[:, :M]
        beta = beta + step * dq[:, M]
        # EM: each variance becomes the mean of its modes' second moments (posterior variances from the Laplace fit).
        # Posterior variance of each participant's mode: 1/A plus what the images and the intercept add (their
        # covariances between images are left out: O(1/images) of a term that is itself O(1/images)).
        diag = inv[:, np.arange(M), np.arange(M)]
        post_a = (1.0 / A + np.einsum("spj,sj->sp", scaled[:, :, :M] ** 2, diag)
                  + 2.0 * scaled[:, :, M] * np.einsum("spj,sj->sp", scaled[:, :, :M], inv[:, :M, M])
                  + scaled[:, :, M] ** 2 * inv[:, M, M][:, None])
        var_a = np.maximum(np.mean(a * a + post_a, axis=1), 1e-8)
        var_c = np.maximum(np.mean(c * c + diag, axis=1), 1e-8)
    return beta, np.sqrt(np.maximum(inv[:, M, M], 0.0))


def primary_p(successes: np.ndarray, counts: np.ndarray, chunk_cells: int = 4_000_000) -> np.ndarray:
    """Two-sided p of the GLMM intercept per study, on a t reference with min(participants, images) - 1 df."""
    S, P, M = counts.shape
    step = max(1, chunk_cells // max(1, P * M))
    out = np.empty(S)
    for start in range(0, S, step):
        beta, se = fit_intercepts(successes[start:start + step], counts[start:start + step])
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(se > 0, beta / se, 0.0)
        out[start:start + step] = 2.0 * stats.t.sf(np.abs(z), max(min(P, M) - 1, 1))
    return out
