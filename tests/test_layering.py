"""Imports go downward only (STYLE.md): a module may import its own layer or lower ones."""

import ast
from pathlib import Path

import vitprune

PKG = Path(vitprune.__file__).parent
# lower number = lower layer
LAYER = {
    "errors": 0, "fsutil": 0, "cost": 0, "dist": 0, "progress": 0, "plan": 1,
    "models": 2, "adapters": 3,
    "scoring": 4, "surgery": 4, "search": 4, "data": 4,
    "train": 5, "io": 5, "speed": 5, "report": 5,
    "pipeline": 6, "compression": 7, "cli": 8, "demo": 9, "__main__": 10, "__init__": 10,
}
# search is pure decision-making: it may import only plan/cost/errors, never a model
SEARCH_ALLOWED = {"errors", "fsutil", "cost", "plan", "progress", "search"}


def _top(module_path: Path) -> str:
    rel = module_path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    pkg_parts = path.relative_to(PKG).parts[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.startswith("vitprune."):
                    out.add(node.module.split(".")[1])
                continue
            base = list(pkg_parts)[: len(pkg_parts) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            if target:
                out.add(target[0])
            else:  # "from . import x" at the package root
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("vitprune."):
                    out.add(a.name.split(".")[1])
    return out


def test_every_module_has_a_layer():
    tops = {_top(p) for p in PKG.rglob("*.py")}
    assert tops <= set(LAYER), f"add these to LAYER: {tops - set(LAYER)}"


def test_imports_go_downward_only():
    bad = []
    for path in PKG.rglob("*.py"):
        me = _top(path)
        for dep in _imports(path):
            if dep not in LAYER or dep == me:
                continue
            if LAYER[dep] > LAYER[me] or (LAYER[dep] == LAYER[me] and me not in ("__init__",)):
                bad.append(f"{path.relative_to(PKG)} imports {dep}")
            if me == "search" and dep not in SEARCH_ALLOWED:
                bad.append(f"{path.relative_to(PKG)} (search) imports {dep}")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)
