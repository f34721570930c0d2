"""Importing is cheap and the package has no import cycles (docs/architecture.md).

The command line's ``--help``, the pure tiling maths, the error classes and the QGIS
plugin's start-up load without torch; the layers of docs/architecture.md import only
downwards, and no two modules import each other at import time.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "geo_pix2pix"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
HEAVY = ("torch", "rasterio", "scipy", "dask", "onnxruntime")

#: Layers of docs/architecture.md, lowest first: a module may import (at any depth, lazily
#: or not) only from its own layer or below. Keys are module prefixes under geo_pix2pix.
LAYERS = [
    ["_version", "errors", "heap", "grid.tiling", "tiles.tilemath", "io.geodesy"],
    ["io", "model", "grid", "osm"],
    ["render", "distributed", "tiles", "train", "evaluate"],
    ["serve"],
    ["qgis", "cli", "__main__", "__init__"],
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if "plugin" in parts:  # the QGIS plugin runs outside the package (its own zip)
            continue
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, module_level_only: bool) -> set[str]:
    """geo_pix2pix modules ``name`` imports (relative to the package), by resolving its import statements."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    package = name.split(".") if is_pkg else name.split(".")[:-1]
    if name == "__init__":
        package = []
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.If) and module_level_only:
            test = ast.unparse(node.test)
            if "TYPE_CHECKING" in test:
                continue
            nodes.extend(node.body + node.orelse)
        if isinstance(node, ast.Try) and module_level_only:
            nodes.extend(node.body)
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "geo_pix2pix":
                target = node.module.split(".")[1:]
            else:
                continue
            mods = _modules()
            for alias in node.names:  # `from . import x` names a submodule
                sub = ".".join([*target, alias.name])
                found.add(sub if sub in mods else ".".join(target) or "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("geo_pix2pix."):
                    found.add(alias.name.split(".", 1)[1])
    return {f for f in found if f != name}


def _layer(name: str) -> int:
    best, rank = -1, None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"geo_pix2pix.{name} is in no layer of tests/test_imports.py (docs/architecture.md)"
    return rank


def test_layers_import_only_downwards():
    wrong = []
    for name, path in _modules().items():
        for dep in _imports(name, path, module_level_only=False):
            if _layer(dep) > _layer(name):
                wrong.append(f"{name} (layer {_layer(name)}) imports {dep} (layer {_layer(dep)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    mods = _modules()
    graph = {n: {d for d in _imports(n, p, module_level_only=True) if d in mods} for n, p in mods.items()}
    # A package's __init__ runs before its submodules: an edge to the package is an edge to __init__ only.
    state: dict[str, int] = {}
    cycles = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                cycles.append(" → ".join([*stack[stack.index(d):], d]))
            elif d not in state:
                visit(d, [*stack, d])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("module", ["geo_pix2pix", "geo_pix2pix.errors", "geo_pix2pix.grid.tiling",
                                    "geo_pix2pix.tiles.tilemath", "geo_pix2pix.cli.main"])
def test_light_modules_import_without_torch(module):
    code = f"import sys, {module}; heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}); " \
           "assert not heavy, heavy"
    out = subprocess.run([sys.executable, "-c", code], env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def _external_imports(path: Path) -> set[str]:
    """Top-level packages outside geo_pix2pix that ``path`` imports at import time."""
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_qgis_start_up_imports_no_torch():
    """What QGIS imports when the plugin registers its Processing provider (QGIS itself is not
    needed to check it): the modules reached at import time import neither torch nor rasterio."""
    mods = _modules()
    todo, seen = ["qgis.provider"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        heavy = _external_imports(mods[name]) & set(HEAVY)
        assert not heavy, f"geo_pix2pix.{name}, imported when QGIS starts, imports {sorted(heavy)}"
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]  # packages run first
        todo += [d for d in _imports(name, mods[name], module_level_only=True) if d in mods]
        todo += [p for p in parents if p in mods]
    assert {"qgis.algorithms", "model.choices"} <= seen


def test_help_loads_only_the_command_line():
    """``--help`` imports click and the package's command modules, nothing heavy (what keeps it fast)."""
    code = ("import sys; from geo_pix2pix.cli.main import main; main(['--help'], standalone_mode=False); "
            f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY) | {'numpy'}!r}); "
            "assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "render" in out.stdout
