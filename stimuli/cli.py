"""``advbias stimuli generate | observe | report | verify``.

Kept free of torch imports at module level so that ``advbias --help`` stays fast; the
handlers import the heavy modules when they run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from advbias.setdir import OBSERVERS_NAME


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
    gen.add_argument("--steps", default=None, help="PGD steps per image (default: the default recipe's, 200)")
    gen.add_argument("--models", default=None, metavar="M[,M]",
                     help="models attacked as one ensemble (mean logits): one model set named after them; default lite0")
    gen.add_argument("--model-set", action="append", default=None, metavar="NAME=M[,M]", dest="model_sets",
                     help="a named set of models attacked as one ensemble; repeat for several sets (every photo, "
                          "target and budget is made once per set), e.g. --model-set conv=lite0,lite1 "
                          "--model-set other=lite2; takes the place of --models")
    gen.add_argument("--holdout", default="", metavar="M[,M]",
                     help="models not attacked, used to measure transfer (e.g. lite2); default none")
    gen.add_argument("--controls", default="", metavar="flip,noise,phase",
                     help="control images: flip (perturbation turned upside down), noise (random +/-eps), "
                          "phase (the perturbation's Fourier amplitudes with random phases, same budget)")
    gen.add_argument("--size", default="224", help="side of the square centre crop in pixels (default 224)")
    gen.add_argument("--seed", default="0", help="random seed (default 0)")
    gen.add_argument("--limit", default=None, metavar="N",
                     help="use only the first N readable photos in sorted order (for demos and tests)")
    gen.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    _add_recipe_options(gen)
    gen.add_argument("--batch-size", default="auto", metavar="N|auto",
                     help="attack items per batch and work unit (auto: 16 on CPU, 256 on CUDA); part of the set's parameters")
    gen.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    gen.add_argument("--out", required=True, metavar="SETDIR", help="folder of the stimulus set (new, empty, or to resume)")
    gen.set_defaults(handler=_generate)

    obs = sub.add_parser("observe", help=f"let models take the trials: SETDIR/{OBSERVERS_NAME} (machine observers)",
                         description="Each model answers every trial type the set supports as a participant "
                                     f"would (it picks the image it finds more A-like); writes SETDIR/{OBSERVERS_NAME} "
                                     "with the bias per trial type and budget (see docs/manifest.md).")
    obs.add_argument("setdir", metavar="SETDIR")
    obs.add_argument("--models", required=True, metavar="M[,M]",
                     help="observer models, e.g. lite2 (held out) or lite0 (attacked: the ceiling)")
    obs.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    obs.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    obs.set_defaults(handler=_observe)

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


def _add_recipe_options(gen: argparse.ArgumentParser) -> None:
    """The recipe's options (stimuli.params.RECIPE_OPTIONS but --steps): each replaces the default recipe's value."""
    gen.add_argument("--loss", default=None, metavar="logit|logodds|ce|auto",
                     help="attack objective (default: the default recipe's, logit; see docs/stimuli.md)")
    gen.add_argument("--momentum", default=None, metavar="MU",
                     help="MI-FGSM momentum decay in [0, 1], 0 for none (default: the default recipe's, 1.0)")
    gen.add_argument("--input-diversity", default=None, metavar="P",
                     help="DI-FGSM probability of a random resize-and-pad per step (default: the default recipe's, 0.7)")
    gen.add_argument("--ti-kernel", default=None, metavar="K",
                     help="TI-FGSM Gaussian gradient smoothing, odd kernel size in pixels, 0 for none "
                          "(default: the default recipe's, 5)")
    gen.add_argument("--step-ratio", default=None, metavar="R|madry",
                     help="step size as a fraction of eps, e.g. 0.125 = eps/8 per step (never less than 2.5/steps); "
                          "'madry' for 2.5 x eps / steps (default: the default recipe's, 0.125)")
    gen.add_argument("--cfm-prob", default=None, metavar="P",
                     help="Clean Feature Mixup: probability that each eligible layer mixes in clean features, 0 for none "
                          "(default: the default recipe's, 0.1)")
    gen.add_argument("--finish-steps", default=None, metavar="N",
                     help="the last N steps attack the models as they are (no DI, TI or CFM), so that the ensemble "
                          "itself is fooled at small budgets (default: the default recipe's, 0; docs/benchmarks.md)")


def _is_rank_zero() -> bool:
    import os

    return int(os.environ.get("RANK", "0") or 0) == 0


def _generate(args: argparse.Namespace) -> int:
    from advbias.errors import CLIError
    from stimuli.generate import generate_set

    if args.model_sets and args.models is not None:
        raise CLIError("give --models (one set) or --model-set (one or more named sets), not both")
    from stimuli.params import RECIPE_OPTIONS

    recipe = {k: getattr(args, k) for k in RECIPE_OPTIONS}
    summary = generate_set(
        args.images, args.pairs, args.eps, out=args.out, models=args.models or "lite0", model_sets=args.model_sets,
        holdout=args.holdout,
        controls=args.controls, size=args.size, seed=args.seed, limit=args.limit, device=args.device,
        batch_size=args.batch_size, progress=not args.no_progress, **recipe,
    )
    if _is_rank_zero():
        counts, run = summary.counts, summary.run
        print(
            f"{summary.path}: {counts['stimuli']} stimuli from {counts['sources']} photos "
            f"({run['units_computed']} work units computed, {run['units_reused']} reused)"
        )
    return 0


def _observe(args: argparse.Namespace) -> int:
    from stimuli.observe import observe_set

    print(observe_set(Path(args.setdir), args.models, device=args.device, progress=not args.no_progress))
    return 0


def _report(args: argparse.Namespace) -> int:
    from stimuli.report import write_report

    path = write_report(Path(args.setdir), gallery=args.gallery)
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
