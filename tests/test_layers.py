"""lmjax's import graph, read from the source (ast): no cycle between modules or between
packages, and no import against the layer order that DESIGN.md and docs/ describe.

Function-local imports count like any other (a cycle hidden inside a function is still a
cycle), and outside `commands/` each one must say why it is local (a comment on its line
or the line above: an optional extra, start-up time, `jax.distributed` before device use).
"""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "lmjax"

# Lowest first. A unit is a top-level module or package of lmjax; it may import units of
# its own layer or below, never above. `commands` is the only place that ties packages
# together for the command line; the `__main__` modules are entry points, part of it.
LAYERS = (
    ("errors", "plotting", "compile_cache"),
    ("model",),
    ("data", "sharding", "distributed"),
    ("config",),
    ("train", "sample"),
    ("interp", "sae"),
    ("graph",),
    ("scaling", "hf"),
    ("repro",),
    ("commands", "__main__"),
)
LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}
LOCAL_IMPORTS_FREE = ("commands",)  # each command imports the library inside `run` (start-up time)


def _module_name(path: Path, root: Path) -> str:
    parts = (root.name, *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    parts = module.split(".")
    if parts[-1] == "__main__":
        return "__main__"
    return parts[1] if len(parts) > 1 else "lmjax"


def import_graph(root: Path = ROOT):
    """{module: {imported lmjax module: [(line, is_local, has_comment)]}} for the package at `root`."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph = {}
    for module, path in files.items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = graph.setdefault(module, {})

        def add(target, node, local):
            if target.split(".")[0] != root.name or target == module:
                return
            commented = "#" in lines[node.lineno - 1] or (node.lineno > 1 and lines[node.lineno - 2].strip().startswith("#"))
            edges.setdefault(target, []).append((node.lineno, local, commented))

        def visit(node, local):
            for child in ast.iter_child_nodes(node):
                inside = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, ast.Import):
                    for alias in child.names:
                        add(alias.name, child, inside)
                elif isinstance(child, ast.ImportFrom):
                    if child.level:
                        base = package.split(".")[: len(package.split(".")) - child.level + 1]
                        source_module = ".".join(base + ([child.module] if child.module else []))
                    else:
                        source_module = child.module
                    for alias in child.names:  # `from pkg import submodule` is an edge to the submodule
                        candidate = f"{source_module}.{alias.name}"
                        add(candidate if candidate in files else source_module, child, inside)
                visit(child, inside)

        visit(ast.parse(source, filename=str(path)), False)
    return graph


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, as [a, b, ..., a], or None."""
    state, stack = {}, []

    def dfs(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def problems(root: Path = ROOT) -> list[str]:
    """Every way the package at `root` breaks the house rules, one line each."""
    graph = import_graph(root)
    out = []
    cycle = find_cycle({m: set(t) for m, t in graph.items()})
    if cycle:
        out.append("module cycle: " + " -> ".join(cycle))
    units = {}
    for module, targets in graph.items():
        for target in targets:
            a, b = _unit(module), _unit(target)
            if a != b:
                units.setdefault(a, set()).add(b)
    cycle = find_cycle(units)
    if cycle:
        out.append("package cycle: " + " -> ".join(cycle))
    for module, targets in sorted(graph.items()):
        for target, sites in sorted(targets.items()):
            a, b = _unit(module), _unit(target)
            for unit in (a, b):
                if unit not in LAYER_OF and unit != "lmjax":
                    out.append(f"{module}: unit {unit!r} has no layer in tests/test_layers.py LAYERS")
            if a in LAYER_OF and b in LAYER_OF and LAYER_OF[b] > LAYER_OF[a]:
                out.append(f"{module} imports {target} (line {sites[0][0]}): {a} must not import {b}, a higher layer")
            if a not in LOCAL_IMPORTS_FREE:
                for line, local, commented in sites:
                    if local and not commented:
                        out.append(f"{module}:{line} imports {target} inside a function without saying why "
                                   "(a comment on the line or the one above)")
    return sorted(set(out))


def test_lmjax_imports_run_one_way_without_cycles():
    assert problems() == []


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in import_graph()} - {"lmjax"}
    assert units <= set(LAYER_OF), units - set(LAYER_OF)


def _copy_tree(tmp_path) -> Path:
    copy = tmp_path / "lmjax"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _append(path: Path, text: str):
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")


@pytest.mark.parametrize("where, text, expected", [
    # each of the cycles the house once had, reintroduced behind a function-local import
    ("model/mamba.py", "\n\ndef _f():\n    from lmjax.model.mixers import mixer_class  # a reason\n", "module cycle"),
    ("data/tokenizers.py", "\n\ndef _f():\n    from lmjax.data.hf_tokenizer import HFTokenizer  # a reason\n",
     "module cycle"),
    ("interp/ssm.py", "\n\ndef _f():\n    from lmjax.interp import heads  # a reason\n", "module cycle"),
    ("train/loop.py", "\n\ndef _f():\n    from lmjax.scaling import sweeps  # a reason\n", "package cycle"),
    # an upward import, and a local import with no reason
    ("model/layers.py", "\nfrom lmjax.config import ConfigError\n", "a higher layer"),
    ("interp/lens.py", "\n\ndef _f():\n    from lmjax.interp import weights\n", "without saying why"),
])
def test_the_checker_fails_on_a_reintroduced_problem(tmp_path, where, text, expected):
    copy = _copy_tree(tmp_path)
    assert problems(copy) == []  # the copy is as clean as the tree
    _append(copy / where, text)
    found = problems(copy)
    assert any(expected in p for p in found), found


def test_find_cycle_on_known_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
