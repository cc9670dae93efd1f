"""The package as a user installs it, and the layout rules a maintainer relies on.

* A wheel built from the repository, installed into a fresh virtual environment
  outside the checkout, serves the participant page, its script and the admin login.
* Stages import only downward (``stimuli -> attacks``; ``experiment`` and ``analysis``
  import neither each other nor ``stimuli``), checked on the source's import statements.
* No product module is over 600 lines.
* Every reader of the two files between stages uses their owner's columns.
"""
from __future__ import annotations

import ast
import http.client
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from servers import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("advbias", "attacks", "stimuli", "experiment", "analysis")
#: What each stage may import from the others (besides itself). ``advbias`` is the neutral
#: home of the CLI root and the file contracts; only its ``cli`` module reaches the stages.
ALLOWED: dict[str, set[str]] = {
    "attacks": {"advbias"},
    "stimuli": {"advbias", "attacks"},
    "experiment": {"advbias"},
    "analysis": {"advbias"},
    "advbias": set(),
}


def _imports(path: Path) -> set[str]:
    """Top-level names of every module that ``path`` imports (at any depth of the file)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _product_modules() -> list[Path]:
    return sorted(p for stage in STAGES for p in (ROOT / stage).rglob("*.py") if "migrations" not in p.parts)


def test_stages_import_only_downward() -> None:
    wrong = []
    for path in _product_modules():
        stage = path.relative_to(ROOT).parts[0]
        if stage == "advbias" and path.name == "cli.py":
            continue  # the root loads each stage's commands
        for name in sorted(_imports(path) & set(STAGES) - {stage} - ALLOWED[stage]):
            wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_import_rule_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from experiment.study import read_set\n")
    assert "experiment" in _imports(bad)


def test_no_product_module_over_600_lines() -> None:
    big = {str(p.relative_to(ROOT)): n for p in _product_modules()
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert not big, big


def test_readers_use_the_owners_columns() -> None:
    import advbias.export
    import advbias.manifest
    import analysis.data
    import experiment.export
    import stimuli.files

    assert stimuli.files.MANIFEST_COLUMNS is advbias.manifest.COLUMNS
    assert set(advbias.manifest.REQUIRED) <= set(advbias.manifest.COLUMNS)
    assert experiment.export.COLUMNS is advbias.export.COLUMNS
    assert analysis.data.EXPORT_COLUMNS is advbias.export.COLUMNS
    assert set(advbias.export.REQUIRED_COLUMNS) <= set(advbias.export.COLUMNS)
    import advbias.observers
    import stimuli.observe

    assert stimuli.observe.read_observers is advbias.observers.read  # one reader of observers.csv


def test_manifest_written_by_stimuli_reads_back(stimulus_set: Path) -> None:
    import csv

    from advbias.manifest import COLUMNS, read_manifest

    with (stimulus_set / "manifest.csv").open(newline="") as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == COLUMNS
    rows = read_manifest(stimulus_set)
    assert {r.condition for r in rows} == {"clean", "adversarial", "flip", "noise"}


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


@pytest.mark.slow
@pytest.mark.wheel
def test_wheel_installed_outside_the_checkout_serves_a_study(tmp_path: Path, stimulus_set: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("advbias-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # Dependencies come from the project's environment; only its site-packages (not its .pth
    # files, so not the editable install of this checkout) is put on the new environment's path.
    deps = [p for p in sys.path if p.endswith("site-packages")] or [sysconfig.get_paths()["purelib"]]
    Path(purelib, "advbias_deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True)
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([python, "-c", "import experiment; print(experiment.resource_dir('templates'))"],
                           check=True, capture_output=True, text=True, cwd=away, env=env).stdout.strip()
    assert where.startswith(purelib) and not where.startswith(str(ROOT))

    instance, url = away / "instance", f"sqlite:///{away / 'study.db'}"
    common = ["--instance", str(instance), "--database-url", url]
    for args in (["db", "upgrade"], ["experiment", "create", "--stimuli", str(stimulus_set), "--name", "wheel"],
                 ["admin", "set-password", "--generate"]):
        done = subprocess.run([python, "-m", "advbias", *args, *common], capture_output=True, text=True, cwd=away,
                              env=env)
        assert done.returncode == 0, done.stderr
    server = ServerProcess(instance, url, workers=1, threads=2, python=python, cwd=away)
    server.env = {"PYTHONPATH": ""}
    with server:
        status, page = _get(server.port, "/run/wheel")
        assert status == 200 and b"run.js" in page
        status, script = _get(server.port, "/static/run.js")
        assert status == 200 and len(script) > 1000
        status, login = _get(server.port, "/admin/login")
        assert status == 200 and b"password" in login.lower()


def test_architecture_page_lists_every_module() -> None:
    """docs/architecture.md's module table names every product module, and only existing ones."""
    import re

    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([a-z_/]+\.py)` \|", page, re.M))
    actual = {str(p.relative_to(ROOT)) for p in _product_modules()}
    assert listed == actual, {"missing": sorted(actual - listed), "stale": sorted(listed - actual)}
