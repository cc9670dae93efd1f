"""The package as a user installs it, and the layout rules a maintainer relies on.

* A wheel built from the repository, installed into a fresh virtual environment
  outside the checkout, serves the participant page, its script and the admin login.
* Stages import only downward (``stimuli -> attacks``; ``experiment`` and ``analysis``
  import neither each other nor ``stimuli``), checked on the source's import statements.
* No import cycle between product modules (imports inside functions included).
* No product module is over 600 lines, and no function in one is over 80.
* Product code never writes the environment (``os.environ[...] =``, ``setdefault``, ``update``,
  ``pop``, ``del``, ``os.putenv``, ...) except in the two documented places named in
  :data:`ENVIRONMENT_WRITES`: settings are resolved once and handed down (experiment/settings.py).
* Every reader of the two files between stages uses their owner's columns.
* One owner per file between stages: exactly one product module spells the names of a stimulus
  set's files (``set.json``, ``manifest.csv``, ``observers.csv``, ``images/``), and the trial-type
  rules exist once (:mod:`advbias.trials`).
* The ``set.json`` reader gives back what its writer wrote, and refuses anything else with a
  ``ValueError`` that names the file (property-based).
"""
from __future__ import annotations

import ast
import http.client
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


#: The documented places where product code writes the environment (docs/architecture.md):
#: (module, function, variable). Each sets a variable a library reads only from there.
ENVIRONMENT_WRITES = {
    ("attacks/foolbox_backend.py", "import_foolbox", "GIT_PYTHON_REFRESH"),  # GitPython, imported by foolbox
    ("stimuli/generate.py", "_prepare_torch", "CUBLAS_WORKSPACE_CONFIG"),  # cuBLAS, when CUDA initialises
}
_ENVIRON_METHODS = {"setdefault", "update", "pop", "popitem", "clear", "__setitem__", "__delitem__"}
_ENV_FUNCTIONS = {"os.putenv", "os.unsetenv", "putenv", "unsetenv"}


def environment_writes(path: Path) -> list[tuple[str, str, int]]:
    """Every write to the environment in ``path``: (enclosing function, variable or "?", line)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    # ``environ`` alone is the process's only where it is imported from os (a WSGI app's is the request's)
    names = {"os.environ"} | {alias.asname or alias.name for node in ast.walk(tree)
                              if isinstance(node, ast.ImportFrom) and node.module == "os"
                              for alias in node.names if alias.name == "environ"}

    def function(node: ast.AST) -> str:
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return node.name
        return "<module>"

    def key(node: ast.AST | None) -> str:
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else "?"

    found = []
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        for target in targets:
            for part in ast.walk(target):
                if isinstance(part, ast.Subscript) and ast.unparse(part.value) in names:
                    found.append((function(node), key(part.slice), node.lineno))
        if isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Attribute) and func.attr in _ENVIRON_METHODS
                    and ast.unparse(func.value) in names) or ast.unparse(func) in _ENV_FUNCTIONS:
                found.append((function(node), key(node.args[0] if node.args else None), node.lineno))
    return found


def test_product_code_writes_the_environment_only_where_documented() -> None:
    writes = {(str(p.relative_to(ROOT)), fn, var): line for p in _product_modules()
              for fn, var, line in environment_writes(p)}
    wrong = sorted(f"{path}:{line} {fn}() writes {var}" for (path, fn, var), line in writes.items()
                   if (path, fn, var) not in ENVIRONMENT_WRITES)
    assert not wrong, "\n".join(wrong)
    assert set(writes) == ENVIRONMENT_WRITES  # and each documented exception is still needed
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert all(var in page and fn in page for _, fn, var in ENVIRONMENT_WRITES)


def test_the_environment_rule_sees_every_kind_of_write(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os\nfrom os import environ\n"
        "os.environ['A'] = '1'\n"
        "def f():\n    os.environ.setdefault('B', '1')\n    os.environ.update(C='1')\n"
        "    environ.pop('D', None)\n    del os.environ['E']\n    os.putenv('F', '1')\n"
        "    os.environ['G'] += 'x'\n"
        "def g(environ):\n    return os.environ.get('H'), dict(os.environ), {**os.environ, 'I': '1'}\n")
    wsgi = tmp_path / "w.py"
    wsgi.write_text("def app(environ, start_response):\n    environ['wsgi.input'] = None\n")
    assert environment_writes(wsgi) == []
    assert [(fn, var) for fn, var, _ in sorted(environment_writes(module), key=lambda w: w[2])] == [
        ("<module>", "A"), ("f", "B"), ("f", "?"), ("f", "D"), ("f", "E"), ("f", "F"), ("f", "G")]


def _long_functions(path: Path, limit: int = 80) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{node.name} (line {node.lineno}, {node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > limit]


def test_no_product_function_over_80_lines() -> None:
    long = {str(p.relative_to(ROOT)): found for p in _product_modules() if (found := _long_functions(p))}
    assert not long, long


def test_the_function_rule_counts_a_functions_lines(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def short():\n" + "    x = 1\n" * 79 + "def long():\n" + "    x = 1\n" * 80)
    assert _long_functions(module) == ["long (line 81, 81 lines)"]


def test_readers_use_the_owners_columns() -> None:
    import advbias.export
    import advbias.manifest
    import analysis.data
    import experiment.export

    assert set(advbias.manifest.REQUIRED) <= set(advbias.manifest.COLUMNS)
    assert experiment.export.COLUMNS is advbias.export.COLUMNS
    assert analysis.data.EXPORT_COLUMNS is advbias.export.COLUMNS
    assert set(advbias.export.REQUIRED_COLUMNS) <= set(advbias.export.COLUMNS)
    import advbias.observers
    import stimuli.observe

    assert stimuli.observe.read_observers is advbias.observers.read  # one reader of observers.csv
    assert stimuli.observe.write_observers is advbias.observers.write  # and one writer


def test_trial_type_rules_exist_once() -> None:
    """The design, the observers, the export and the analysis share one list of trial types."""
    import advbias.export
    import advbias.manifest
    import advbias.trials
    import analysis.effects
    import experiment.config
    import experiment.design

    assert advbias.export.MAIN_TRIAL_TYPES is advbias.trials.MAIN_TRIAL_TYPES
    assert advbias.export.TRIAL_TYPES is advbias.trials.TRIAL_TYPES
    assert experiment.design.MAIN_TRIAL_TYPES is advbias.trials.MAIN_TRIAL_TYPES
    assert experiment.config.MAIN_TRIAL_TYPES is advbias.trials.MAIN_TRIAL_TYPES
    assert tuple(analysis.effects.ORDER) == advbias.trials.MAIN_TRIAL_TYPES
    assert {t.other for t in advbias.trials.RULES} <= set(advbias.manifest.IMAGE_CONDITIONS)
    names = [t for p in _product_modules() for t in _string_literals(p) if t.strip() == "vs_noise"]
    assert len(names) == 1, f"the trial type vs_noise is spelled {len(names)} times outside docstrings"


def _string_literals(path: Path) -> list[str]:
    """Every string constant of a module except its docstrings (f-string parts included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


@pytest.mark.parametrize("name", ["set.json", "manifest.csv", "observers.csv", "images/"])
def test_one_module_spells_each_file_of_a_set(name: str) -> None:
    """The folder layout of a stimulus set has one owner; everyone else uses its names."""
    spelled = sorted({str(p.relative_to(ROOT)) for p in _product_modules()
                      if any(name in text for text in _string_literals(p))})
    # the images folder is named once as "images" (the owner builds "images/<id>.png" from it)
    assert spelled == ([] if name == "images/" else ["advbias/setdir.py"]), spelled


def test_the_literal_rule_sees_fstrings_and_skips_docstrings(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('"""Reads set.json."""\ndef f(d):\n    """set.json"""\n    return f"{d}/set.json"\n')
    assert [t for t in _string_literals(module) if "set.json" in t] == ["/set.json"]


def test_manifest_written_by_stimuli_reads_back(stimulus_set: Path) -> None:
    import csv

    from advbias.manifest import COLUMNS, read_manifest

    with (stimulus_set / "manifest.csv").open(newline="") as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == COLUMNS
    rows = read_manifest(stimulus_set)
    assert {r.condition for r in rows} == {"clean", "adversarial", "flip", "noise"}


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether ``node`` sits under ``if TYPE_CHECKING:`` (never executed, so no import at run time)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph(root: Path, packages: tuple[str, ...] = STAGES) -> dict[str, set[str]]:
    """Module -> the product modules it imports, at any depth (inside functions too).

    ``from . import x``, ``from .x import y``, ``from pkg import name`` (``name`` a submodule or an attribute
    of ``pkg/__init__``) and ``import a.b`` are all resolved to the module file they load; imports under
    ``if TYPE_CHECKING:`` are left out (they never run).
    """
    files = sorted(p for pkg in packages for p in (root / pkg).rglob("*.py") if "migrations" not in p.parts)
    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p for p in files}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or _in_type_checking(node, parents):
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                           for alias in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_product_modules() -> None:
    cycles = import_cycles(import_graph(ROOT))
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_rule_sees_imports_inside_functions(tmp_path: Path) -> None:
    pkg = tmp_path / "analysis"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "c.py").write_text("from analysis import a\nfrom typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from analysis.d import g\n")
    (pkg / "d.py").write_text("import analysis.c\n")
    graph = import_graph(tmp_path, ("analysis",))
    assert graph["analysis.b"] == {"analysis.a"} and graph["analysis.c"] == {"analysis.a"}
    assert import_cycles(graph) == [["analysis.a", "analysis.b"]]


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


# --------------------------------------------------------------------------- set.json, property-based

_NAME = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
_CATEGORY = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
_PLAIN = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), _NAME,
                                st.floats(allow_nan=False, allow_infinity=False)),
                      lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_NAME, inner, max_size=3)),
                      max_leaves=8)
_PARAMETERS = st.fixed_dictionaries(
    {"pairs": st.lists(st.tuples(_CATEGORY, _CATEGORY).map(":".join), max_size=3),
     "eps": st.lists(st.integers(1, 255), max_size=4), "steps": st.integers(1, 10**4), "size": st.integers(1, 4096),
     "models": st.lists(_NAME, max_size=3), "holdout": st.lists(_NAME, max_size=2),
     "controls": st.lists(st.sampled_from(["flip", "noise"]), max_size=2)},
    optional={"seed": st.integers(0, 2**63), "images": _NAME, "step_ratio": st.one_of(st.none(), st.floats(0.01, 1))})
_SET_INFO = st.fixed_dictionaries(
    {"parameters": _PARAMETERS},
    optional={"attack": st.dictionaries(_NAME, _PLAIN, max_size=3),
              "models": st.lists(st.dictionaries(_NAME, _PLAIN, max_size=3), max_size=2),
              "holdout_models": st.lists(st.dictionaries(_NAME, _PLAIN, max_size=3), max_size=2),
              "counts": st.one_of(st.none(), st.dictionaries(_NAME, st.integers(0, 10**6), max_size=4)),
              "run": st.one_of(st.none(), st.dictionaries(_NAME, _PLAIN, max_size=3)),
              "finished_at": st.one_of(st.none(), _NAME), "a_later_record": _PLAIN})
_PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None)


@_PROPERTY
@given(info=_SET_INFO)
def test_set_json_reader_returns_what_the_writer_wrote(info: dict) -> None:
    from advbias.setdir import SET_FORMAT, read_set_json, write_set_json

    with tempfile.TemporaryDirectory() as folder:
        path = write_set_json(folder, info)
        assert read_set_json(folder) == read_set_json(path) == {"format": SET_FORMAT, **info}
        assert next(iter(json.loads(path.read_text(encoding="utf-8")))) == "format"  # the tag comes first


@_PROPERTY
@given(data=st.one_of(st.binary(max_size=200), _PLAIN.map(lambda v: json.dumps(v).encode()),
                      st.sampled_from([b"[" * 100_000, b"1" * 5000, b"\xff\xfe{}", b"", b"{\"format\": 1}"])))
def test_set_json_reader_refuses_garbage_with_a_value_error_naming_the_file(data: bytes) -> None:
    from advbias.setdir import SetFileError, read_set_json

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "set.json")
        path.write_bytes(data)
        with pytest.raises(SetFileError) as caught:
            read_set_json(path)
        assert isinstance(caught.value, ValueError) and str(path) in str(caught.value)


_FIELDS = ["format", "parameters", "parameters.pairs", "parameters.eps", "parameters.steps", "parameters.size",
           "parameters.models", "parameters.holdout", "parameters.controls", "attack", "sources", "models",
           "holdout_models", "counts", "run"]


@_PROPERTY
@given(info=_SET_INFO, field=st.sampled_from(_FIELDS), value=st.one_of(st.just("<missing>"), _PLAIN))
def test_set_json_reader_names_the_broken_field(info: dict, field: str, value: object) -> None:
    """A missing or retyped field is either still valid or refused with its name; nothing else escapes."""
    from advbias.setdir import SET_FORMAT, SetFileError, read_set_json, validate_set_info, write_set_json

    record = json.loads(json.dumps({"format": SET_FORMAT, **info}))
    *parents, key = field.split(".")
    holder = record
    for name in parents:
        holder = holder[name]
    if value == "<missing>":
        holder.pop(key, None)
    else:
        holder[key] = value
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "set.json")
        path.write_text(json.dumps(record), encoding="utf-8")
        try:
            assert read_set_json(folder) == record
        except SetFileError as exc:
            assert str(path) in str(exc) and exc.field and field.startswith(exc.field.split(".")[0]), str(exc)
            with pytest.raises(SetFileError):  # and the writer refuses to write it, leaving nothing behind
                validate_set_info(record)
            os.unlink(path)
            if field != "format":  # the writer sets the format tag itself
                with pytest.raises(SetFileError):
                    write_set_json(folder, record)
            assert not os.listdir(folder)
