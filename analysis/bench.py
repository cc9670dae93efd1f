"""Benchmark of a full analysis: ``python -m analysis.bench``.

Simulates an export (default 200 participants x 200 main trials, plus catch and
practice trials, with some participants to exclude), writes it as CSV and
Parquet, and times ``run_analysis`` end to end (what ``advbias analyze`` does)
and each stage on its own. Prints a Markdown table for ``docs/benchmarks.md``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from advbias.trials import MAIN_TRIAL_TYPES


def _timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=200)
    parser.add_argument("--trials", type=int, default=200, help="main trials per participant")
    parser.add_argument("--conditions", default=",".join(MAIN_TRIAL_TYPES))
    parser.add_argument("--eps", default="2,4,8,16")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (the median is shown)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from analysis import effects, stats
    from analysis.config import AnalysisConfig
    from analysis.data import load_export
    from analysis.run import run_analysis
    from analysis.simulation import simulate_export

    conditions = tuple(args.conditions.split(","))
    eps = tuple(int(e) for e in args.eps.split(","))
    frame = simulate_export(
        args.participants, args.trials, {e: 0.5 + 0.1 * i / max(1, len(eps) - 1) for i, e in enumerate(eps)},
        eps=eps, conditions=conditions, n_images=50, n_catch=10, n_practice=4, inattentive=0.05, incomplete=0.03,
        distracted=0.03, seed=args.seed,
    )
    frame.attrs.clear()
    config = AnalysisConfig()
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        csv_path, parquet_path = Path(folder) / "export.csv", Path(folder) / "export.parquet"
        frame.to_csv(csv_path, index=False)
        frame.to_parquet(parquet_path, index=False)
        seconds, df = _timed(lambda: load_export(csv_path), args.repeat)
        rows.append(("load_export (CSV)", seconds))
        seconds, _ = _timed(lambda: load_export(parquet_path), args.repeat)
        rows.append(("load_export (Parquet)", seconds))
        seconds, result = _timed(lambda: stats.apply_exclusions(df, config), args.repeat)
        kept = result[0]  # type: ignore[index]
        rows.append(("apply_exclusions", seconds))
        seconds, _ = _timed(lambda: stats.bias_by_eps(kept, config), args.repeat)
        rows.append(("bias_by_eps (means, t + bootstrap CIs, t-tests, Wilcoxon, Holm)", seconds))
        seconds, _ = _timed(lambda: stats.mixed_model(kept, config, fits=True), args.repeat)
        rows.append((f"mixed_model ({2 * len(conditions)} Laplace GLMM fits)", seconds))
        pairs = len(conditions) * (len(conditions) - 1) // 2
        seconds, _ = _timed(lambda: effects.contrasts(kept, config), args.repeat)
        rows.append((f"contrasts ({pairs} pair(s): paired t and one cell-means GLMM each)", seconds))
        seconds, _ = _timed(lambda: effects.trend(kept, config), args.repeat)
        rows.append((f"trend ({len(conditions)} GLMM fit(s) with log2(eps))", seconds))
        seconds, _ = _timed(lambda: run_analysis(csv_path, Path(folder) / "out", config), args.repeat)
        rows.append(("run_analysis: CSV in, every table, figure and report out", seconds))
        command = [sys.executable, "-m", "advbias", "analyze", str(csv_path), "--out",
                   str(Path(folder) / "cli"), "--quiet"]
        seconds, _ = _timed(lambda: subprocess.run(command, check=True, capture_output=True), args.repeat)
        rows.append(("**`advbias analyze` as a new process (imports included)**", seconds))

    n_rows = len(frame)
    print(f"{args.participants} participants x {args.trials} main trials ({n_rows} rows with catch and practice "
          f"trials), conditions {', '.join(conditions)}, eps {', '.join(map(str, eps))}, 50 images; "
          f"median of {args.repeat} runs; {platform.python_version()}, {os.cpu_count()} CPUs")
    print()
    print("| stage | seconds |")
    print("|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
