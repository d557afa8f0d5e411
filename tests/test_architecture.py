"""The layering rules of design.md, read from the source: arrows point down only."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# "x." forbids x's submodules, "x" forbids x entirely
FORBIDDEN = {
    "app": ("torch", "cuda_ops", "engine."),
    "engine": ("PySide6", "pyqtgraph", "app", "cuda_ops."),
    "cuda_ops": ("PySide6", "pyqtgraph", "app", "engine"),
}


def imported_names(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.lineno, node.module


def forbidden(name: str, rules: tuple[str, ...]) -> bool:
    return any(name == f.rstrip(".") and not f.endswith(".") or name.startswith(f if f.endswith(".") else f + ".")
               for f in rules)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down(package):
    bad = [f"{path.relative_to(ROOT)}:{line} imports {name}"
           for path in sorted((ROOT / package).rglob("*.py"))
           for line, name in imported_names(path)
           if forbidden(name, FORBIDDEN[package])]
    assert not bad, "\n".join(bad)


def test_the_rule_itself_catches_offenders():
    assert forbidden("PySide6.QtCore", FORBIDDEN["engine"])
    assert forbidden("cuda_ops.reference", FORBIDDEN["engine"])
    assert not forbidden("cuda_ops", FORBIDDEN["engine"])
    assert forbidden("torch", FORBIDDEN["app"]) and forbidden("torch.nn", FORBIDDEN["app"])
    assert forbidden("engine.latents", FORBIDDEN["app"]) and not forbidden("engine", FORBIDDEN["app"])
