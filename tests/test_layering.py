"""Imports run one way between ltc's packages (README "Architecture"): shared modules import no
package, passes import nothing torch-side, the torch side never imports what consumes it."""

from __future__ import annotations

import ast
from pathlib import Path

import ltc

ROOT = Path(ltc.__file__).parent
SHARED = ("errors", "defaults", "fileio", "hardware", "options", "onnx_io", "ticket", "masks", "reporting", "reports",
          "controls")
TOP = ("api", "cli", "demo")
FORBIDDEN = {
    **{m: ("passes", "compressor", "exporters", "benchmarks", "render", *TOP) for m in SHARED},
    "passes": ("compressor", "exporters", "benchmarks", "render", *TOP),
    "compressor": ("exporters", "benchmarks", *TOP),
    "exporters": ("benchmarks", *TOP),
    "benchmarks": ("compressor", "exporters", *TOP),
}


def _imports(path: Path) -> set[str]:
    """Every ltc module ``path`` imports, at any depth of the file (lazy imports count)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ltc"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("ltc"))
    return out


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_imports_run_one_way():
    bad = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        room = rel.parts[0].removesuffix(".py")
        if room not in FORBIDDEN:
            continue
        for imported in _imports(path):
            if _room(imported) in FORBIDDEN[room]:
                bad.append(f"{rel} imports {imported}")
    assert not bad, bad
