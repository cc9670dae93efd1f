"""``advbias bench attack``: the attack-engine benchmark (see :mod:`attacks.bench`)."""
from __future__ import annotations

import argparse


def _bench_attack(args: argparse.Namespace) -> int:
    from .bench import main

    return main(args)


def _bench_cold(args: argparse.Namespace) -> int:
    from .bench import main_cold

    return main_cold(args)


def _bench_transfer(args: argparse.Namespace) -> int:
    from .transfer import main

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

    c = bench_sub.add_parser("cold", help="first call in a fresh process: engine vs foolbox on the same folded model",
                             description="Each method in its own new process, alternating; the model and photos are "
                                         "loaded untimed and the first attack call is timed (see docs/benchmarks.md).")
    c.add_argument("--model", default="lite0")
    c.add_argument("--images", type=int, default=4)
    c.add_argument("--eps", default="2,4,8,16", help="budgets in 0-255 levels")
    c.add_argument("--targets", default="281,867", help="ImageNet target classes (foolbox needs single classes)")
    c.add_argument("--steps", type=int, default=5)
    c.add_argument("--rounds", type=int, default=3, help="fresh processes per method (the median counts)")
    c.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    c.add_argument("--out", default=None, help="also write the results as JSON")
    c.set_defaults(handler=_bench_cold)

    t = bench_sub.add_parser("transfer", help="leave-one-model-out transfer of attack recipes to a held-out model",
                             description="Attack all but one model, test the one left out, per recipe and budget "
                                         "(see docs/benchmarks.md).")
    t.add_argument("--recipes", default="logit-mi-di-ti5-s8-200,cfm,cfm-f20,cfm-di1-f20",
                   help="comma-separated recipe names from attacks.transfer.RECIPES, or 'all'")
    t.add_argument("--models", default="lite0,lite1,lite2", help="models; each is held out in turn")
    t.add_argument("--heldout", default="", help="only these held-out models (default: every model in turn)")
    t.add_argument("--photos", default="8-13", help="indices of foolbox's 20 sample photos, e.g. 8-13 or 0,3,5")
    t.add_argument("--confirm", default="", help="more photos, reported apart: confirm on photos not chosen on (14-19)")
    t.add_argument("--targets", default="cat,truck", help="two target categories (the 2AFC pair)")
    t.add_argument("--eps", default="2,4,8,16", help="budgets in 0-255 levels")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--out", default=None, help="also write the results as JSON")
    t.set_defaults(handler=_bench_transfer)


if __name__ == "__main__":  # `python -m attacks.cli bench attack ...` without the other stages installed
    import sys

    parser = argparse.ArgumentParser(prog="advbias")
    register(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args()
    sys.exit(ns.handler(ns))
