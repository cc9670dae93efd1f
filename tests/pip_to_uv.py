"""Print pip's configured package sources as ``uv pip install`` arguments (shell-quoted, one line).

``uv`` does not read pip's configuration (``pip.conf``, ``PIP_*`` variables), so on a machine
whose pip is pointed at a local mirror or wheel folder, uv alone would download everything
from PyPI again. ``make install`` passes it what pip would use: ``index-url``,
``extra-index-url``, ``find-links`` and ``constraint``, each from the highest-priority place
pip reads it from (environment, then site, user and global files; an ``[install]`` section
before ``[global]``). With extra indexes uv is told to pick the best version across all of
them, as pip does (``--index-strategy unsafe-best-match``). Nothing is printed when pip has no
such configuration, or when pip cannot be asked.
"""
from __future__ import annotations

import ast
import shlex
import subprocess
import sys

#: pip option -> uv option; each may hold several whitespace-separated values.
OPTIONS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}
#: Lower is stronger: pip lets the environment override site, user and global files.
SOURCES = {":env:": 0, "site": 1, "user": 2, "global": 3}
SECTIONS = {"install": 0, "global": 1, "": 1}


def pip_config() -> list[str]:
    """The lines of ``pip config list`` (``where.section.option='value'``); none when pip cannot say."""
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return done.stdout.splitlines() if done.returncode == 0 else []


def _rank(where: str) -> tuple[int, int]:
    """Precedence of a ``pip config list`` key prefix such as ``:env:.`` or ``global.``."""
    source, _, section = where.partition(".")
    if where.startswith(":env:"):
        return SOURCES[":env:"], 0
    return SOURCES.get(source, 3), SECTIONS.get(section or source, 1)


def parse(lines: list[str]) -> dict[str, list[str]]:
    """Values of the options uv needs, from pip's strongest source for each."""
    best: dict[str, tuple[tuple[int, int], list[str]]] = {}
    for line in lines:
        key, sep, raw = line.partition("=")
        if not sep:
            continue
        where, _, option = key.rpartition(".")
        if option not in OPTIONS:
            continue
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw.strip("'\"")
        rank = _rank(where)
        if option not in best or rank < best[option][0]:
            best[option] = (rank, str(value).split())
    return {option: values for option, (_rank_, values) in best.items()}


def uv_arguments(config: dict[str, list[str]]) -> list[str]:
    args: list[str] = []
    for option, flag in OPTIONS.items():
        for value in config.get(option, []):
            args += [flag, value]
    if config.get("extra-index-url") or config.get("find-links"):
        args += ["--index-strategy", "unsafe-best-match"]
    return args


if __name__ == "__main__":
    print(shlex.join(uv_arguments(parse(pip_config()))))
