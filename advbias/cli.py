"""The ``advbias`` command line: one root, sub-commands contributed by each stage.

Each stage keeps its commands next to its code, in a module that exposes
``register(subparsers)``. The root imports those modules lazily-light (they must
not import torch or Flask at module level) so that ``advbias --help`` stays fast. ``python -m advbias`` runs the same root.

Errors that a user can fix are raised as :class:`~advbias.errors.InputError` and printed
as one line on stderr with exit status 2; anything else is a bug and is reported as one
(see :func:`main`).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Callable, Sequence

from advbias.errors import user_error

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
    """Run one ``advbias`` command; the exit status: 0, 2 for the user's error, 1 for a bug, 130, 141.

    Error policy. A problem the user can fix is an :class:`~advbias.errors.InputError` (every
    place that validates options, settings or a file the user named raises it or a subclass),
    or a ``FileNotFoundError``/``FileExistsError``/``PermissionError``/``IsADirectoryError``/
    ``NotADirectoryError`` that carries the path it failed on (``exc.filename``): the user named
    that path, or a folder it lives in, and can fix it. Either is printed as one line,
    ``advbias: error: <message>``, with exit status 2. Every other exception (a plain
    ``ValueError`` raised inside a library, a ``KeyError``, an ``OSError`` without a path) is a
    bug in advbias: its full traceback is printed, then one line ``advbias: internal error:
    <Type>: <message> (a bug in advbias: please report it with the traceback above)``, and
    the exit status is 1.
    """
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
    except Exception as exc:  # noqa: BLE001 - sorted into the user's errors and bugs below
        if user_error(exc):
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"advbias: error: {message}", file=sys.stderr)
            return 2
        traceback.print_exc(file=sys.stderr)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"advbias: internal error: {type(exc).__name__}{': ' + first if first else ''} "
              "(a bug in advbias: please report it with the traceback above)", file=sys.stderr)
        return 1
    return int(status or 0)
