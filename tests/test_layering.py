"""The import graph's layering, read from the source (every import statement, function-local ones included).

runtime is the lowest layer (numpy + onnxruntime + tiktoken): it never imports torch, models, gpt2_export or
benchmarks. models (the torch reference) may import runtime's contracts (generation options) but never the
exporter or the benchmarks. The exporter never imports the benchmarks either: their `bench` / `bench-serve`
commands reach `gpt2-export` through the `gpt2_export.commands` entry points (tests/gpt2_export/test_cli.py).

No module imports itself through others: the graph of modules (imports under `if TYPE_CHECKING:` aside, which
never run) has no cycle, so no function-local import exists to dodge one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "models", "gpt2_export", "benchmarks")
FORBIDDEN = {
    "runtime": {"torch", "models", "gpt2_export", "benchmarks", "transformers"},
    "models": {"gpt2_export", "benchmarks"},
    "gpt2_export": {"benchmarks"},
}


def imported_roots(path: Path) -> set[str]:
    """Top-level package names imported anywhere in one file (relative imports excluded)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_lower_layer_never_imports_a_higher_one(package):
    offences = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {file: names for file, names in offences.items() if names} == {}


def test_the_check_sees_function_local_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    import torch\n    from models.config import GPT2Config\n")
    assert imported_roots(source) == {"torch", "models"}


def module_name(path: Path, root: Path) -> str:
    """runtime/serve/service.py -> runtime.serve.service; a package's __init__.py -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports (relative imports resolved; TYPE_CHECKING blocks left out)."""
    modules = {module_name(p, root): p for package in packages for p in sorted((root / package).rglob("*.py"))}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        annotations_only = {
            id(sub) for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for child in node.body for sub in ast.walk(child)
        }
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(tree):
            if id(node) in annotations_only:
                continue
            if isinstance(node, ast.Import):
                targets.update(resolve(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = node.module if not node.level else ".".join(filter(None, [base, node.module]))
                # `from . import x` imports the submodule x when there is one, else a name of the package.
                targets.update(resolve(f"{source}.{a.name}") if f"{source}.{a.name}" in modules else resolve(source)
                               for a in node.names)
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_through_others():
    assert cycles(import_graph(ROOT)) == []


def test_the_cycle_check_finds_a_cycle_hidden_in_a_function(tmp_path):
    package = tmp_path / "models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "loading.py").write_text(
        "from .errors import ReadError\n\ndef load():\n    from .pretrained import Base\n"
    )
    (package / "pretrained.py").write_text("def load():\n    from . import loading\n")
    (package / "errors.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .loading import load\n"
    )
    graph = import_graph(tmp_path, ("models",))
    assert graph["models.errors"] == set()  # annotation-only imports never run
    assert cycles(graph) == [["models.loading", "models.pretrained"]]
