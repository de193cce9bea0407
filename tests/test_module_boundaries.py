"""Module boundaries: no module of ggprec (nor a script) imports another ggprec module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        ours = node.level > 0 or (node.module or "").split(".")[0] == "ggprec"
        if ours:
            found += [f"{path.relative_to(ROOT)}:{node.lineno} {alias.name}" for alias in node.names
                      if alias.name.startswith("_") and not alias.name.startswith("__")]
    return found


def test_no_private_name_is_imported_across_modules() -> None:
    files = sorted((ROOT / "ggprec").rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
    assert len(files) > 20
    assert [hit for f in files for hit in private_imports(f)] == []
