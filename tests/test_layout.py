"""The package reads top to bottom as the data flows: each subpackage imports only earlier ones,
and DGL is imported only by the graph backend."""
from __future__ import annotations

import ast
import pathlib

ORDER = ["compat", "data", "pose", "graph", "methods", "diffusion", "metrics", "pipeline",
         "callbacks", "demo", "app", "cli_config", "cli", "__main__"]
ROOT = pathlib.Path(__file__).resolve().parents[1] / "grpose"


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_no_import_from_a_later_package():
    back_edges = []
    for path in ROOT.rglob("*.py"):
        unit = path.relative_to(ROOT).parts[0].removesuffix(".py")
        if unit == "__init__":
            continue
        assert unit in ORDER, f"{path}: add {unit!r} to the package order"
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "grpose" and len(parts) > 1 and parts[1] in ORDER:
                if ORDER.index(parts[1]) > ORDER.index(unit):
                    back_edges.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not back_edges, back_edges


def test_dgl_is_imported_only_by_the_graph_backend():
    users = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
             if any(n == "dgl" or n.startswith("dgl.") for n in _imports(p))]
    assert users == ["graph/backend.py"], users
