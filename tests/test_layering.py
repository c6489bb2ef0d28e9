"""Imports go downward only: a module may import lower layers, never its own layer's other
modules or higher ones; and no two modules import each other, directly or round a circle."""

import ast
from pathlib import Path

import vitprune

PKG = Path(vitprune.__file__).parent
# lower number = lower layer
LAYER = {
    "errors": 0, "version": 0, "records": 0, "fsutil": 1, "cost": 1, "dist": 1, "progress": 1, "plan": 2,
    "latency": 2, "devices": 2,
    "adapters": 3, "models": 4,
    "scoring": 5, "surgery": 5, "search": 5, "data": 5,
    "train": 6, "io": 6, "speed": 6, "report": 6,
    "rundir": 7, "profile": 7, "runtime": 7, "config": 7.5, "choice": 7.75, "pipeline": 8,
    "compression": 9, "jobs": 9, "cli": 10, "demo": 11, "__main__": 12, "__init__": 12,
}
# search is pure decision-making: it may import only plan/cost/errors, never a model
SEARCH_ALLOWED = {"errors", "fsutil", "cost", "plan", "latency", "progress", "search"}


def _module(path: Path) -> tuple[str, ...]:
    parts = path.relative_to(PKG).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts


def _imports(path: Path) -> set[tuple[str, ...]]:
    """Every vitprune module ``path`` imports, at any depth of the file (lazy imports too)."""
    tree = ast.parse(path.read_text())
    pkg_parts = path.relative_to(PKG).parts[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.startswith("vitprune."):
                    base = tuple(node.module.split(".")[1:])
                else:
                    continue
            else:
                base = tuple(list(pkg_parts)[: len(pkg_parts) - (node.level - 1)]
                             + (node.module.split(".") if node.module else []))
            for a in node.names:  # "from .x import y": y may be a submodule
                sub = base + (a.name,)
                out.add(sub if (PKG.joinpath(*sub).with_suffix(".py").exists()
                                or PKG.joinpath(*sub).is_dir()) else base)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("vitprune."):
                    out.add(tuple(a.name.split(".")[1:]))
    return {m for m in out if m}


def test_every_module_has_a_layer():
    tops = {_module(p)[0].removesuffix(".py") for p in PKG.rglob("*.py")}
    assert tops <= set(LAYER), f"add these to LAYER: {tops - set(LAYER)}"


def test_imports_go_downward_only():
    bad = []
    for path in PKG.rglob("*.py"):
        me = _module(path)[0]
        for dep in {m[0] for m in _imports(path)}:
            if dep not in LAYER or dep == me:
                continue
            if LAYER[dep] > LAYER[me] or (LAYER[dep] == LAYER[me] and me != "__init__"):
                bad.append(f"{path.relative_to(PKG)} imports {dep}")
            if me == "search" and dep not in SEARCH_ALLOWED:
                bad.append(f"{path.relative_to(PKG)} (search) imports {dep}")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def _cycles(graph: dict) -> list[list]:
    """Modules on an import circle, found by depth-first search (one circle per start)."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for dep in graph.get(node, ()):
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_no_import_circles_inside_a_package():
    graph = {}
    for path in PKG.rglob("*.py"):
        me = _module(path)
        # a package's __init__ re-exports its modules: edges into the package are not circles
        graph[me] = {d for d in _imports(path) if d != me and d[: len(me)] != me}
    circles = _cycles(graph)
    assert not circles, "import circles:\n" + "\n".join(
        " -> ".join(".".join(m) for m in c) for c in circles)


def test_the_circle_check_finds_a_circle():
    assert _cycles({("a",): {("b",)}, ("b",): {("a",)}, ("c",): set()}) == [[("a",), ("b",), ("a",)]]


# What only a model family's adapter may read: the attributes of timm's, T2T-ViT's and Hugging
# Face's model classes, and the modules that define them.
FAMILY_ATTRIBUTES = {
    "attn", "mlp", "qkv", "fc1", "fc2", "proj", "norm1", "norm2", "q_norm", "k_norm",
    "patch_embed", "cls_token", "dist_token", "num_prefix_tokens", "head_dist", "attn_pool",
    "pos_embed", "pretrained_cfg", "forward_intermediates", "tokens_to_token", "encoder", "vit",
    "deit", "layer", "attention", "intermediate", "num_attention_heads", "num_classes",
    "embed_dim", "head", "norm", "fc_norm", "img_size", "in_chans", "config", "base_model",
}
# what vitprune's code calls models and blocks (a Cost's .attention or a BlockParts' .proj are
# vitprune's own fields, so names are checked on these and in chains like ``x.attn.qkv``)
MODEL_NAMES = {"model", "net", "new", "student", "teacher", "m", "block", "blk", "b", "layer"}
FAMILY_MODULES = ("timm.layers", "timm.models.vision_transformer", "transformers")
ALLOWED_TIMM = {"timm.data", "timm.utils", "timm.models"}  # preprocessing, EMA, clean_state_dict


def _family_reads(source: str) -> list[str]:
    """Where ``source`` reads a model family's internals (attribute or import)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            v = node.value
            on_model = isinstance(v, ast.Name) and v.id in MODEL_NAMES
            chained = isinstance(v, ast.Attribute) and v.attr in FAMILY_ATTRIBUTES | {"blocks"}
            if node.attr in FAMILY_ATTRIBUTES and (on_model or chained):
                found.append(f"line {node.lineno}: .{node.attr}")
            elif node.attr == "blocks" and on_model:
                found.append(f"line {node.lineno}: {v.id}.blocks")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""])
            for name in names:
                allowed = name.split(".")[:2] in ([*a.split(".")] for a in ALLOWED_TIMM)
                family = name.startswith(FAMILY_MODULES) or name == "timm"
                if family or (name.startswith("timm.") and not allowed):
                    found.append(f"line {node.lineno}: import {name}")
    return found


def test_only_adapters_read_model_family_internals():
    bad = []
    for path in PKG.rglob("*.py"):
        if _module(path)[0] == "adapters":
            continue
        bad += [f"{path.relative_to(PKG)} {r}" for r in _family_reads(path.read_text())]
    assert not bad, ("model-family internals read outside vitprune/adapters (go through the "
                     "family's adapter):\n" + "\n".join(bad))


def test_the_family_check_finds_family_reads():
    src = ("import timm\nfrom transformers import ViTModel\nfrom timm.data import Mixup\n"
           "y = model.blocks[0].attn.qkv(x)\nz = shape.blocks + cost.attention\n"
           "w = block.mlp\nfrom timm.layers import Mlp\n")
    assert sorted(_family_reads(src)) == sorted([
        "line 1: import timm", "line 2: import transformers", "line 4: .qkv",
        "line 4: model.blocks", "line 6: .mlp", "line 7: import timm.layers"])
