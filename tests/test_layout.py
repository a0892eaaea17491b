"""The package layout stays acyclic: no two modules import each other (at any level,
lazy imports included; package __init__ re-exports aside)."""
from __future__ import annotations

import ast
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


def test_no_two_modules_import_each_other():
    graph = _imports()
    pairs = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph.get(b, ())})
    assert pairs == []
