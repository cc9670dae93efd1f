"""``advbias analyze``, ``advbias power``, ``advbias simulate`` and ``advbias simulate-export``.

Only argparse is imported here; pandas and scipy load inside the
handlers so that ``advbias --help`` stays fast.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from advbias.errors import InputError
from advbias.setdir import OBSERVERS_NAME, SET_JSON_NAME


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} must lie strictly between 0 and 1")
    return value


def _bias_text(text: str) -> str:
    """A bias as the command line gives it; checked here so a bad value is argparse's one-line error."""
    from .simulation import parse_bias

    try:
        parse_bias(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--bias must be", "must be")) from None
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


def _eps_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of budgets") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("budgets must be positive whole numbers, e.g. 2,4,8,16")
    return values


def _analyze(args: argparse.Namespace) -> int:
    from .run import run_analysis

    tables = run_analysis(args.export, args.out, args.config, progress=not args.quiet, set_path=args.set,
                          observers=args.observers)
    out = Path(args.out)
    for row in tables["primary"].itertuples(index=False):
        print(f"primary ({row.test}, {row.alternative}) {row.condition}: bias {row.bias:.3f} "
              f"[{row.bias_ci_low:.3f}, {row.bias_ci_high:.3f}], p = {row.p:.3g}, Holm p = {row.p_holm:.3g}")
    for row in tables["bias_by_condition"].itertuples(index=False):
        print(f"{row.condition}: bias {row.bias:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}], "
              f"t({row.dof:g}) = {row.t:.2f}, p = {row.p:.3g}, n = {row.n_participants}")
    print(f"report: {out / 'report.html'}")
    return 0


def _pilot_sds(args: argparse.Namespace) -> tuple[float, float, int]:
    """Participant and image SDs (and the image count) from a pilot export's mixed model."""
    from .config import load_config
    from .data import load_export
    from .stats import apply_exclusions, mixed_model

    config = load_config(args.config)
    kept, _ = apply_exclusions(load_export(args.pilot), config)
    main = kept[(kept["kind"] == "main") & (kept["condition"] == args.condition)]
    if main.empty:
        raise InputError(f"the pilot export has no main trials of condition {args.condition!r} after exclusions")
    table = mixed_model(main, config, models=("intercept",))
    sds = table[table["effect"] == "ran_pars"].set_index("term")["estimate"]
    participant_sd = float(sds.get("sd(participant)", args.participant_sd))
    image_sd = float(sds.get("sd(source)", args.image_sd))
    n_images = args.images if args.images_given else int(main["source"].nunique())
    print(f"from the pilot ({args.condition}): participant SD {participant_sd:.3f}, image SD {image_sd:.3f}, "
          f"{n_images} images", file=sys.stderr)
    return participant_sd, image_sd, n_images


def _power(args: argparse.Namespace) -> int:
    from .power import design_power, power_analysis
    from .simulation import parse_bias

    participant_sd, image_sd, n_images = args.participant_sd, args.image_sd, args.images
    if args.pilot:
        participant_sd, image_sd, n_images = _pilot_sds(args)
    common = dict(participant_sd=participant_sd, image_sd=image_sd, n_images=n_images, sims=args.sims,
                  seed=args.seed, max_participants=args.max_participants, progress=not args.quiet)
    bias = parse_bias(args.bias)
    if args.test is None:  # the primary test the analysis settings declare (the mixed model unless changed)
        from .config import load_config

        args.test = "glmm" if load_config(args.config).primary == "mixed_model" else "ttest"
    if args.test == "trend":
        if not isinstance(bias, dict):
            raise InputError("--test trend needs a bias per budget, e.g. --bias 2:0.52,4:0.55,8:0.58,16:0.62")
        result = design_power("trend", bias, args.trials, args.alpha, args.power, **common)
    elif isinstance(bias, dict):
        raise InputError(f"--test {args.test} takes one bias, e.g. --bias 0.55 (a bias per budget is for --test trend)")
    elif args.test == "contrast":
        if args.baseline_bias is None:
            raise InputError("--test contrast needs --baseline-bias (the control trial type's bias)")
        result = design_power("contrast", {"condition": bias, "baseline": args.baseline_bias}, args.trials,
                              args.alpha, args.power, **common)
    else:
        result = power_analysis(bias, args.trials, args.alpha, args.power, test=args.test, **common)
    print(result.summary())
    if args.curve:
        result.curve.to_csv(args.curve, index=False)
        print(f"power curve: {args.curve}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    import json

    from .participants import simulate_study
    from .simulation import parse_bias

    bias = parse_bias(args.bias)
    summary = simulate_study(
        args.slug, args.participants, bias, set_dir=args.set, url=args.url, participant_sd=args.participant_sd,
        image_sd=args.image_sd, catch_accuracy=args.catch_accuracy, seed=args.seed, concurrency=args.concurrency,
        timeout=args.timeout, progress=not args.quiet,
    )
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(summary["statuses"].items()))
    print(f"{summary['participants']} synthetic participants ({statuses}); {summary['trials_answered']} answers in "
          f"{summary['seconds']:.1f} s ({summary['responses_per_second']} answers/s)")
    truth = ", ".join(f"{k} {v:g}" for k, v in summary["truth"]["bias"].items())
    print(f"true bias: {truth}")
    if args.truth:
        Path(args.truth).write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
        print(f"truth and counts: {args.truth}")
    return 0


def _simulate_export(args: argparse.Namespace) -> int:
    from .simulation import parse_bias, simulate_export

    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise InputError(f"--out must end in .csv or .parquet, got {out.name}")
    frame = simulate_export(
        args.participants, args.trials, parse_bias(args.bias), args.participant_sd, args.image_sd,
        eps=args.eps, conditions=tuple(args.conditions.split(",")), n_images=args.images,
        n_catch=args.catch, inattentive=args.inattentive, seed=args.seed,
    )
    frame.attrs.clear()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        frame.to_csv(out, index=False)
    else:
        frame.to_parquet(out, index=False)
    print(f"{len(frame)} trials of {args.participants} simulated participants: {out}")
    return 0


class _StoreImages(argparse.Action):
    """Remember whether --images was given (a pilot export otherwise sets it)."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        setattr(namespace, self.dest, values)
        namespace.images_given = True


def _add_analyze(subparsers: argparse._SubParsersAction) -> None:
    """`advbias analyze EXPORT --out DIR`."""
    analyze = subparsers.add_parser(
        "analyze", help="analyse a trial export: bias vs chance, tests, mixed model, figures, report",
        description="Analyse a trial export (CSV or Parquet, docs/export.md) and write report.html, report.md, "
                    "tidy CSV tables and PNG/SVG figures into --out.")
    analyze.add_argument("export", help="the export file written by `advbias export` (CSV or Parquet)")
    analyze.add_argument("--out", required=True, help="output folder (created if missing)")
    analyze.add_argument("--config", help="analysis.toml with [analysis] and [exclusions] settings")
    analyze.add_argument("--set", help=f"the stimulus set (folder or its {SET_JSON_NAME}): its parameters go into the "
                                       "generated Methods paragraph")
    analyze.add_argument("--observers", help=f"a stimulus set's {OBSERVERS_NAME} (or the set's folder): machine observers "
                                             "drawn beside the people, and a human-vs-machine table")
    analyze.add_argument("--quiet", action="store_true", help="no progress bar")
    analyze.set_defaults(handler=_analyze)


def _add_power(subparsers: argparse._SubParsersAction) -> None:
    """`advbias power`."""
    power = subparsers.add_parser(
        "power", help="participants needed to detect a bias (simulation and analytic t-test)",
        description="Power analysis: simulate studies from the mixed model (participants and images as random "
                    "intercepts) and analyse each as `advbias analyze` does; the analytic one-sample t-test "
                    "answer is shown beside it.")
    power.add_argument("--bias", type=_bias_text, required=True,
                       help="the true population-average bias to detect, e.g. 0.53; with --test trend one per "
                            "budget, e.g. 2:0.52,4:0.55,8:0.58,16:0.62")
    power.add_argument("--baseline-bias", type=_probability,
                       help="--test contrast: the bias of the trial type compared against (e.g. vs_noise's)")
    power.add_argument("--trials", type=_positive_int, required=True,
                       help="main trials per participant in the tested cell (condition x budget; --test trend: "
                            "per budget; --test contrast: per trial type)")
    power.add_argument("--alpha", type=_probability, default=0.05, help="two-sided significance level (0.05)")
    power.add_argument("--power", type=_probability, default=0.8, help="target power (0.8)")
    power.add_argument("--sims", type=_positive_int, default=1000, help="simulated studies per sample size (1000)")
    power.add_argument("--seed", type=int, default=0, help="random seed (0)")
    power.add_argument("--participant-sd", type=_non_negative, default=0.3,
                       help="SD of participant random intercepts, log-odds (0.3)")
    power.add_argument("--image-sd", type=_non_negative, default=0.3,
                       help="SD of image random intercepts, log-odds (0.3)")
    power.add_argument("--images", type=_positive_int, default=50, action=_StoreImages,
                       help="number of source images in the study (50)")
    power.add_argument("--test", choices=("ttest", "glmm", "trend", "contrast"), default=None,
                       help="the test each simulated study is analysed with; default: the primary test of the "
                            "analysis settings (--config), the mixed model's intercept unless changed (generalises "
                            "over images); or the t-test of participant means, the dose-response over budgets, or "
                            "a paired contrast of two trial types")
    power.add_argument("--pilot", help="a pilot export: take participant/image SDs and image count from its "
                                       "mixed model instead of --participant-sd/--image-sd/--images")
    power.add_argument("--condition", default="targets", help="the pilot condition to use (targets)")
    power.add_argument("--config", help="analysis.toml (exclusions applied to the pilot)")
    power.add_argument("--max-participants", type=_positive_int, default=5000,
                       help="give up above this many participants (5000)")
    power.add_argument("--curve", help="write the evaluated sizes and their power to this CSV")
    power.add_argument("--quiet", action="store_true", help="no progress bar")
    power.set_defaults(handler=_power, images_given=False)


def _add_simulate(subparsers: argparse._SubParsersAction) -> None:
    """`advbias simulate SLUG` (synthetic participants over HTTP)."""
    simulate = subparsers.add_parser(
        "simulate", help="synthetic participants take a study through the real HTTP API",
        description="Run synthetic participants through a served experiment (rehearsal, load and power checks). "
                    "Each answers with a known true bias per budget, drawn from the mixed model.")
    simulate.add_argument("slug", help="the experiment's slug")
    simulate.add_argument("--participants", type=_positive_int, required=True, help="how many participants")
    simulate.add_argument("--set", required=True,
                          help="the stimulus set the experiment was created from (its manifest tells the synthetic "
                               "participants which image carries the target; the API never does)")
    simulate.add_argument("--bias", default="0.55", help="true bias: 0.55, or per budget 2:0.52,4:0.55 (0.55)")
    simulate.add_argument("--url", default="http://127.0.0.1:5000", help="the server (http://127.0.0.1:5000)")
    simulate.add_argument("--participant-sd", type=_non_negative, default=0.3, help="log-odds SD (0.3)")
    simulate.add_argument("--image-sd", type=_non_negative, default=0.3, help="log-odds SD (0.3)")
    simulate.add_argument("--catch-accuracy", type=_probability, default=0.97,
                          help="probability of a correct catch answer (0.97)")
    simulate.add_argument("--concurrency", type=_positive_int, default=4, help="participants at once (4)")
    simulate.add_argument("--seed", type=int, default=0,
                          help="random seed (0); the same seed resumes the same participants")
    simulate.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request (30)")
    simulate.add_argument("--truth", help="write the true parameters and counts to this JSON file")
    simulate.add_argument("--quiet", action="store_true", help="no progress bar")
    simulate.set_defaults(handler=_simulate)


def _add_simulate_export(subparsers: argparse._SubParsersAction) -> None:
    """`advbias simulate-export FILE`."""
    export = subparsers.add_parser(
        "simulate-export", help="write a synthetic trial export with a known truth (no server needed)",
        description="Write a trial export (docs/export.md) of simulated participants, e.g. to rehearse "
                    "`advbias analyze` before data exist.")
    export.add_argument("out", help="FILE.csv or FILE.parquet")
    export.add_argument("--participants", type=_positive_int, default=50, help="participants (50)")
    export.add_argument("--trials", type=_positive_int, default=160, help="main trials per participant (160)")
    export.add_argument("--bias", default="2:0.51,4:0.53,8:0.56,16:0.6", help="true bias (float or per budget)")
    export.add_argument("--eps", type=_eps_list, default=(2, 4, 8, 16), help="budgets (2,4,8,16)")
    export.add_argument("--conditions", default="targets", help="comma-separated conditions (targets)")
    export.add_argument("--images", type=_positive_int, default=50, help="source images (50)")
    export.add_argument("--catch", type=int, default=10, help="catch trials per participant (10)")
    export.add_argument("--participant-sd", type=_non_negative, default=0.3, help="log-odds SD (0.3)")
    export.add_argument("--image-sd", type=_non_negative, default=0.3, help="log-odds SD (0.3)")
    export.add_argument("--inattentive", type=float, default=0.05, help="share answering at random (0.05)")
    export.add_argument("--seed", type=int, default=0, help="random seed (0)")
    export.set_defaults(handler=_simulate_export)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the analysis commands to the ``advbias`` root parser."""
    for add in (_add_analyze, _add_power, _add_simulate, _add_simulate_export):
        add(subparsers)
