"""``advbias bench attack``: the attack-engine benchmark (see :mod:`attacks.bench`)."""
from __future__ import annotations

import argparse


def _bench_attack(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    from .bench import main

    return main(args)


def register(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="WHAT")
    bench_sub.required = True
    p = bench_sub.add_parser("attack", help="foolbox vs the batched PGD engine vs the forward+backward floor")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument("--images", type=int, default=8, help="foolbox ImageNet photos (repeated past 20)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eps", default="2,4,8,16", help="budgets in 0-255 levels")
    p.add_argument("--targets", default="281,867", help="ImageNet target classes (foolbox needs single classes)")
    p.add_argument("--model", default="lite0", help="the single-model case")
    p.add_argument("--ensemble", default="lite0,lite1", help="the ensemble case")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per method (best counts)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="also write the results as JSON")
    p.set_defaults(handler=_bench_attack)


if __name__ == "__main__":  # `python -m attacks.cli bench attack ...` without the other stages installed
    import sys

    parser = argparse.ArgumentParser(prog="advbias")
    register(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args()
    sys.exit(ns.handler(ns))
