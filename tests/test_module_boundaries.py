"""Modules talk through their public names only: no ggprec module imports another's private name
(`from .x import _y`) or reaches into it (`x._y` where x is a ggprec module)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "ggprec"


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def own_module(node: ast.ImportFrom) -> bool:
    return node.level > 0 or (node.module or "").split(".")[0] == "ggprec"


def violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    modules: set[str] = set()  # names bound to ggprec modules in this file
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and own_module(node):
            for alias in node.names:
                if private(alias.name):
                    found.append(f"{path.name}:{node.lineno} imports {alias.name} from {node.module or '.'}")
                if not node.module or node.module == "ggprec":  # `from . import x`: x is a module
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ggprec" and alias.asname:
                    modules.add(alias.asname)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id in modules):
            found.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module_boundary() -> None:
    found = [v for path in sorted(PACKAGE.rglob("*.py")) for v in violations(path)]
    assert found == []


def test_the_checker_sees_both_forms(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("from .gguf_info import _Cursor, ModelInfo\nfrom . import store as s\ns._now()\nx._ok()\n")
    assert violations(src) == ["m.py:1 imports _Cursor from gguf_info", "m.py:3 uses s._now"]
