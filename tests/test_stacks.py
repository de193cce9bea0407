"""Two stacks: the predict stack (what llama.cpp will allocate and how fast and how well a plan will do)
imports no llama_cpp and runs nothing; the measure stack (load, quantize, run, eval, calibrate, probes) sits
on top of it. Imports are read from the source, at module level and inside functions alike, so a lazy
import cannot hide an upward edge; the package has no import cycle at all."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "ggprec"
LLAMA = "llama_cpp"
LOADER = "ggprec.llama_bindings"  # loads llama_cpp by name (importlib): importing it is importing llama_cpp
# The predict stack (docs/ARCHITECTURE.md): modules, and packages whose every module belongs to it.
PREDICT = ("ggml_types", "roles", "errors", "gguf_layout", "gguf_info", "units", "settings", "profile", "plan",
           "devices", "cpu_buffers", "tensor_overrides", "compute_graph", "memory", "speed", "priors", "forecast",
           "inspection")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """The ggprec modules (and llama_cpp) a file imports anywhere in it (but under `if TYPE_CHECKING:`)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                   for stmt in block.body for n in ast.walk(stmt)}  # annotations only: never run
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == LLAMA:
                found.add(LLAMA)
            elif module.split(".")[0] == "ggprec":
                for alias in node.names:
                    found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top == LLAMA:
                    found.add(LLAMA)
                elif top == "ggprec":
                    found.add(alias.name)
    found.discard(name)
    if LOADER in found:
        found.add(LLAMA)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in files}
    return {module_name(p): imports(p, known) for p in files}


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module `start` reaches -> the module that imports it on the way (to print the path)."""
    via: dict[str, str] = {}
    todo = [start]
    while todo:
        here = todo.pop()
        for dep in graph.get(here, ()):
            if dep not in via:
                via[dep] = here
                if dep != start:
                    todo.append(dep)
    return via


def path_to(via: dict[str, str], start: str, end: str) -> str:
    hops = [end, via[end]]
    while hops[-1] != start:
        hops.append(via[hops[-1]])
    return " -> ".join(reversed(hops))


def test_the_predict_stack_never_reaches_llama_cpp() -> None:
    graph = import_graph()
    predict = [m for m in graph if (m.split(".") + [""])[1] in (*PREDICT, "recommend")]
    bad = []
    for module in predict:
        via = reachable(graph, module)
        if LLAMA in via:
            bad.append(path_to(via, module, LLAMA))
    assert not bad, "predict stack reaches llama_cpp:\n" + "\n".join(bad)


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = import_graph()
    cycles = sorted({path_to(via, m, m) for m in graph if m in (via := reachable(graph, m))})
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_importing_recommend_loads_no_llama_cpp() -> None:
    code = "import sys, ggprec.recommend, ggprec.forecast; print('llama_cpp' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
