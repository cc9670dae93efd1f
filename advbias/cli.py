"""The ``advbias`` command line: one root, sub-commands contributed by each stage.

Each stage keeps its commands next to its code, in a module that exposes
``register(subparsers)``. The root imports those modules lazily-light (they must
not import torch or Flask at module level) so that ``advbias --help`` stays fast. ``python -m advbias`` runs the same root.

Errors that a user can fix are raised as :class:`CLIError` (or ``ValueError``/
``FileNotFoundError``) and printed as one line on stderr with exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable, Sequence

from advbias.errors import CLIError

#: Modules that contribute sub-commands, in the order they appear in ``--help``.
COMMAND_MODULES: tuple[str, ...] = (
    "attacks.cli",
    "stimuli.cli",
    "experiment.commands",
    "analysis.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advbias",
        description="Adversarial perceptual-bias experiments: stimuli, web experiment, analysis.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a stage that is not installed
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int | None] = args.handler
    try:
        status = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handling below, not at exit
    except KeyboardInterrupt:
        print("advbias: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `advbias ... | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except (CLIError, ValueError, FileNotFoundError, FileExistsError, PermissionError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"advbias: error: {message}", file=sys.stderr)
        return 2
    return int(status or 0)
