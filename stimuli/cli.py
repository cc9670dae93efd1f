"""``advbias stimuli generate | report | verify``.

Kept free of torch imports at module level so that ``advbias --help`` stays fast; the
handlers import the heavy modules when they run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _whole(value: str | None, option: str, minimum: int) -> int | None:
    """Parse a whole-number option in the handler, so that a bad value is one error line."""
    if value is None:
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{option} must be a whole number, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{option} must be at least {minimum}, got {number}")
    return number


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stimuli",
        help="build, check and describe an adversarial stimulus set",
        description="Build, check and describe an adversarial stimulus set (see docs/stimuli.md).",
    )
    sub = parser.add_subparsers(dest="stimuli_command", metavar="SUBCOMMAND")
    sub.required = True

    gen = sub.add_parser(
        "generate",
        help="perturb photos toward two categories at several budgets",
        description=(
            "For every photo, category pair A:B and budget: one image perturbed toward A and one toward B "
            "(targeted L-infinity PGD on the attacked models), plus the clean crop and optional controls. "
            "Re-running the same command resumes; under torchrun the work is split across processes."
        ),
    )
    gen.add_argument("--images", required=True, metavar="DIR|builtin",
                     help="folder of JPEG/PNG photos (searched recursively), or 'builtin' for the bundled samples")
    gen.add_argument("--pairs", required=True, metavar="A:B[,C:D]",
                     help="category pairs, e.g. cat:truck,sheep:chair (categories, ImageNet class names or indices)")
    gen.add_argument("--eps", required=True, metavar="E[,E]", help="budgets in 8-bit levels (1..255), e.g. 2,4,8,16")
    gen.add_argument("--steps", default="100", help="PGD steps per image (default 100)")
    gen.add_argument("--models", default="lite0", metavar="M[,M]",
                     help="models attacked as one ensemble (mean logits); default lite0")
    gen.add_argument("--holdout", default="", metavar="M[,M]",
                     help="models not attacked, used to measure transfer (e.g. lite2); default none")
    gen.add_argument("--controls", default="", metavar="flip,noise",
                     help="control images: flip (perturbation turned upside down), noise (random +/-eps)")
    gen.add_argument("--size", default="224", help="side of the square centre crop in pixels (default 224)")
    gen.add_argument("--seed", default="0", help="random seed (default 0)")
    gen.add_argument("--limit", default=None, metavar="N",
                     help="use only the first N readable photos in sorted order (for demos and tests)")
    gen.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    gen.add_argument("--batch-size", default="auto", metavar="N|auto",
                     help="attack items per batch and work unit (auto: 16 on CPU, 256 on CUDA); part of the set's parameters")
    gen.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    gen.add_argument("--out", required=True, metavar="SETDIR", help="folder of the stimulus set (new, empty, or to resume)")
    gen.set_defaults(handler=_generate)

    rep = sub.add_parser("report", help="write SETDIR/report.html (success and transfer rates, gallery)",
                         description="Write SETDIR/report.html: per-budget success and transfer rates and a gallery.")
    rep.add_argument("setdir", metavar="SETDIR")
    rep.add_argument("--gallery", default="12", metavar="N",
                     help="number of source photos shown in the gallery (default 12; 0 for none)")
    rep.set_defaults(handler=_report)

    ver = sub.add_parser("verify", help="re-read every file: hash = name, budget holds, manifest consistent",
                         description="Re-read every file of the set and check it; exit status 1 on any violation.")
    ver.add_argument("setdir", metavar="SETDIR")
    ver.set_defaults(handler=_verify)


def _is_rank_zero() -> bool:
    import os

    return int(os.environ.get("RANK", "0") or 0) == 0


def _generate(args: argparse.Namespace) -> int:
    from stimuli.generate import generate_set

    batch = args.batch_size.strip().lower()
    if batch != "auto":
        try:
            batch = int(batch)
        except ValueError:
            raise ValueError(f"--batch-size must be 'auto' or a positive whole number, got {args.batch_size!r}") from None
    setdir = generate_set(
        args.images, args.pairs, args.eps, out=args.out, steps=_whole(args.steps, "--steps", 1), models=args.models,
        holdout=args.holdout, controls=args.controls, size=_whole(args.size, "--size", 16),
        seed=_whole(args.seed, "--seed", 0), limit=_whole(args.limit, "--limit", 1),
        device=args.device, batch_size=batch, progress=not args.no_progress,
    )
    if _is_rank_zero():
        import json

        meta = json.loads((setdir / "set.json").read_text())
        counts, run = meta["counts"], meta["run"]
        print(
            f"{setdir}: {counts['stimuli']} stimuli from {counts['sources']} photos "
            f"({run['units_computed']} work units computed, {run['units_reused']} reused)"
        )
    return 0


def _report(args: argparse.Namespace) -> int:
    from stimuli.report import write_report

    path = write_report(Path(args.setdir), gallery=_whole(args.gallery, "--gallery", 0))
    print(path)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from stimuli.verify import verify_set

    result = verify_set(Path(args.setdir))
    if result.problems:
        for p in result.problems:
            print(p, file=sys.stderr)
        print(f"advbias: {len(result.problems)} problem(s) in {args.setdir} ({result.files} files checked)", file=sys.stderr)
        return 1
    print(f"{args.setdir}: OK ({result.files} files: hashes, budgets, metadata and manifest checked)")
    return 0
