"""Views and CLI handlers translate requests into calls: no queries, sessions or transactions in them.

The experiment's web views (``api.py``, ``admin.py``, ``pages.py``) and its CLI handlers
(``commands.py``) call the domain modules (``participants``, ``responses``, ``study``,
``accounts``, ``monitor``, ``export``); SQL lives only there, so it is written, reviewed and
tested once.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VIEWS = ["experiment/api.py", "experiment/admin.py", "experiment/pages.py", "experiment/commands.py"]
#: Names that mean a view builds a query or runs a transaction itself.
FORBIDDEN_CALLS = {"select", "insert", "update", "delete", "text", "session", "write", "write_connection",
                   "execute", "scalar", "scalars"}
#: What a handler may take from SQLAlchemy: describing a URL, recognising an error.
ALLOWED_SQLALCHEMY = {"sqlalchemy.engine", "sqlalchemy.exc"}


@pytest.mark.parametrize("path", VIEWS)
def test_views_hold_no_sql(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if module and module.startswith("sqlalchemy") and module not in ALLOWED_SQLALCHEMY:
                problems.append(f"line {node.lineno}: imports {module}")
            if module == "experiment.models":
                problems.append(f"line {node.lineno}: imports the tables")
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in FORBIDDEN_CALLS:
                problems.append(f"line {node.lineno}: calls {name}()")
    assert not problems, f"{path}: " + "; ".join(problems)
