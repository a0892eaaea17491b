"""The package layout stays acyclic: no chain of modules imports back into itself (at
any length, lazy imports included; package __init__ re-exports aside)."""
from __future__ import annotations

import ast
import graphlib
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _imports() -> dict[str, set[str]]:
    mods = {}
    for f in (SRC / "modelglue").rglob("*.py"):
        parts = f.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("modelglue"):
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("modelglue")}
        mods[name] = (deps, f.name == "__init__.py")
    return {m: {d for d in deps if d in mods and d != m and not mods[d][1]}
            for m, (deps, is_pkg) in mods.items() if not is_pkg}


def test_no_import_cycles():
    try:
        graphlib.TopologicalSorter(_imports()).prepare()
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None

