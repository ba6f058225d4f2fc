"""The import graph's layering, read from the source (every import statement, function-local ones included).

runtime is the lowest layer (numpy + onnxruntime + tiktoken): it never imports torch, models, gpt2_export or
benchmarks. models (the torch reference) may import runtime's contracts (generation options) but never the
exporter or the benchmarks. The exporter's command line still imports benchmarks for `bench` (issue 17 leaves
that edge to be removed), so gpt2_export -> benchmarks is not checked here yet.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "runtime": {"torch", "models", "gpt2_export", "benchmarks", "transformers"},
    "models": {"gpt2_export", "benchmarks"},
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
