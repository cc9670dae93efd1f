"""Coverage benchmark of the primary analysis: ``python -m analysis.coverage``.

Draws ``--replicates`` studies from the generative model (participants *and* images
random, image SD > 0) and analyses each as ``advbias analyze`` does: the mixed
model's intercept (the default primary test) and, side by side, the t-interval of
participant means. Reports how often each 95% interval covers its truth (the
subject-specific log-odds for the mixed model, the population-average bias for the
t-interval) and how often each test rejects when there is no bias. Prints a Markdown
table for ``docs/benchmarks.md``.
"""
from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np


def _replicate(seed: int, bias: float, args: argparse.Namespace) -> dict[str, float]:
    from .glmm import fit_logistic_glmm
    from .simulation import simulate_trials
    from .common import t_interval

    sim = simulate_trials(args.participants, args.trials, bias, args.participant_sd, args.image_sd, eps=(8,),
                          n_images=args.images, n_catch=0, n_practice=0, seed=seed)
    main = sim.kind == 1
    participant, source, y = sim.participant[main], sim.source[main], sim.correct[main].astype(float)
    means = np.bincount(participant, y) / np.bincount(participant)
    _, _, t_low, t_high = t_interval(means, 0.95)
    cell = participant * args.images + source
    keys, codes = np.unique(cell, return_inverse=True)
    successes, trials = np.bincount(codes, y), np.bincount(codes).astype(float)
    fit = fit_logistic_glmm(successes, np.ones((len(keys), 1)), {"participant": keys // args.images,
                                                                  "source": keys % args.images}, trials=trials)
    row = fit.summary(0.95)[0]
    return {"beta": sim.truth["logit"]["targets:8"], "g_low": row["ci_low"], "g_high": row["ci_high"],
            "g_p": row["p"], "g_est": row["estimate"], "g_se": row["std_err"], "t_low": t_low, "t_high": t_high,
            "t_p": _t_p(means)}


def _t_p(means: np.ndarray) -> float:
    from .power import ttest_p

    return float(ttest_p(means[None, :])[0])


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Coverage and type-I error of both intervals/tests over the replicates."""
    from scipy import stats
    from tqdm.auto import tqdm

    out: dict[str, dict[str, float]] = {}
    for label, bias in (("effect", args.bias), ("null", 0.5)):
        rows = [_replicate(args.seed + i, bias, args)
                for i in tqdm(range(args.replicates), desc=f"replicates ({label})", disable=args.quiet)]
        beta = np.array([r["beta"] for r in rows])
        # The same Wald interval with a t quantile on (fewer of participants and images) - 1 degrees of freedom.
        dof = min(args.participants, args.images) - 1
        half = stats.t.ppf(0.975, dof) * np.array([r["g_se"] for r in rows])
        est = np.array([r["g_est"] for r in rows])
        out[label] = {
            "glmm_coverage": float(np.mean([(r["g_low"] < b < r["g_high"]) for r, b in zip(rows, beta)])),
            "glmm_t_coverage": float(np.mean((est - half < beta) & (beta < est + half))),
            "glmm_t_reject": float(np.mean(2 * stats.t.sf(np.abs(est / half * stats.t.ppf(0.975, dof)), dof) < 0.05)),
            "ttest_coverage": float(np.mean([(r["t_low"] < bias < r["t_high"]) for r in rows])),
            "glmm_reject": float(np.mean([r["g_p"] < 0.05 for r in rows])),
            "ttest_reject": float(np.mean([r["t_p"] < 0.05 for r in rows])),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.coverage", description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--participants", type=int, default=40)
    parser.add_argument("--trials", type=int, default=80, help="main trials per participant")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--bias", type=float, default=0.56, help="population-average bias of the effect runs")
    parser.add_argument("--participant-sd", type=float, default=0.3)
    parser.add_argument("--image-sd", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=10_000)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = run(args)
    n = args.replicates
    se = math.sqrt(0.95 * 0.05 / n)
    print(f"{n} replicates per row; {args.participants} participants x {args.trials} main trials, {args.images} "
          f"images; participant SD {args.participant_sd:g}, image SD {args.image_sd:g} (log-odds); Monte Carlo SE of "
          f"a 95% coverage: {se:.3f}; {time.perf_counter() - started:.0f} s on {platform.processor() or 'CPU'}\n")
    dof = min(args.participants, args.images) - 1
    print(f"| truth | GLMM Wald z CI covers beta | GLMM Wald t({dof}) CI | t-CI of participant means covers the bias "
          f"| GLMM z rejects (p < .05) | GLMM t({dof}) rejects | t-test rejects |")
    print("|---|---|---|---|---|---|---|")
    for label, bias in (("effect", args.bias), ("null", 0.5)):
        r = result[label]
        print(f"| bias {bias:g} | {r['glmm_coverage']:.1%} | {r['glmm_t_coverage']:.1%} | {r['ttest_coverage']:.1%} | "
              f"{r['glmm_reject']:.1%} | {r['glmm_t_reject']:.1%} | {r['ttest_reject']:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
