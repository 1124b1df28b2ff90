"""Structure the design card asks for: no import cycles between mergekd's packages or between two files."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "mergekd").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the mergekd modules it imports (function-level imports included: a late import is still a cycle)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("mergekd"):
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    edges[mod].add(full if full in mods else target)
    return edges


def test_no_import_cycles():
    mods = _modules()
    edges = _imports(mods)
    file_cycles = sorted((a, b) for a in edges for b in edges[a] if a < b and a in edges.get(b, ()))
    assert file_cycles == []

    def area(m: str) -> str:
        return m.split(".")[1] if m.count(".") else m

    packages: dict[str, set[str]] = defaultdict(set)
    for a, targets in edges.items():
        for b in targets:
            if area(a) != area(b):
                packages[area(a)].add(area(b))
    package_cycles = sorted((a, b) for a in packages for b in packages[a] if a < b and a in packages.get(b, ()))
    assert package_cycles == []
