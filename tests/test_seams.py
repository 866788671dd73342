"""The two seams hold: only builder/targets/ knows a hardware family and only
builder/engines/ knows an inference engine. No other module branches on a target
name, an engine kind or an architecture (a comparison, a membership test, a lookup
table keyed by one, a match case)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from builder.plugins import ENGINES as PLUGGED_ENGINES
from builder.plugins import TARGETS

PKG = Path(__file__).resolve().parent.parent / "builder"
SEAMS = (PKG / "targets", PKG / "engines")
ARCHES = {"amd64", "arm64", "armhf", "i386", "x86_64", "aarch64", "riscv64"}
ENGINES = set(PLUGGED_ENGINES)
NAMES = set(TARGETS) | ENGINES | ARCHES


def _constants(node: ast.AST) -> set[str]:
    """String constants a comparison operand names: itself, or the items of a tuple,
    list or set literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_constants(e) for e in node.elts)) if node.elts else set()
    return set()


def branches(source: str) -> list[tuple[int, str]]:
    """(line, name) of every place `source` branches on one of NAMES."""
    found = []
    for node in ast.walk(ast.parse(source)):
        named: set[str] = set()
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                named |= _constants(operand)
        elif isinstance(node, ast.Dict):
            for key in node.keys:
                if key is not None:
                    named |= _constants(key)
        elif isinstance(node, ast.Subscript) and not (
                isinstance(node.value, ast.Name) and node.value.id == "Literal"):
            named |= _constants(node.slice)  # a lookup; Literal[...] only declares a type
        elif isinstance(node, ast.MatchValue):
            named |= _constants(node.value)
        found += [(node.lineno, n) for n in sorted(named & NAMES)]
    return found


def modules() -> list[Path]:
    return sorted(f for f in PKG.rglob("*.py")
                  if not any(f.is_relative_to(seam) for seam in SEAMS))


@pytest.mark.parametrize("module", modules(), ids=lambda f: str(f.relative_to(PKG)))
def test_no_module_outside_the_seams_branches_on_a_target_engine_or_arch(module: Path
                                                                         ) -> None:
    assert branches(module.read_text()) == [], (
        f"{module.relative_to(PKG)} names a target, engine or architecture; ask the "
        "profile's target (builder/targets) or engine (builder/engines) instead")


@pytest.mark.parametrize("snippet", [
    'if p.target == "raspberry-pi5":\n    pass\n',
    'x = kind in ("llama.cpp", "other")\n',
    'RECIPES = {"tensorrt-llm": 1}\n',
    'pkg = TABLE["arm64"]\n',
    'match arch:\n    case "amd64":\n        pass\n',
])
def test_the_guard_sees_each_kind_of_branch(snippet: str) -> None:
    assert branches(snippet), snippet


def test_the_guard_leaves_data_that_does_not_branch() -> None:
    assert branches('default = "x86-gateway"\nf(kind="llama.cpp")\n') == []
