"""The two seams hold: only builder/targets/ knows a hardware family and only
builder/engines/ knows an inference engine. No other module branches on a target
name, an engine kind or an architecture (a comparison, a membership test, a lookup
table keyed by one, a match case), reaches into a plug-in's own profile section
(`p.engine.llama_cpp`, `p.jetson`), or speaks a plug-in's vocabulary in its code (an
identifier or a token-like string: gguf, cuda, l4t, trtllm ...; prose in messages,
docstrings and comments may name what it explains)."""

from __future__ import annotations

import ast
import re
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


# --- sections and vocabulary ----------------------------------------------------------------

SECTIONS = {t.section for t in TARGETS.values()} | {e.section for e in PLUGGED_ENGINES.values()}
VOCABULARY = re.compile(
    r"(?i:gguf|ggml|llama|cuda|l4t|tegra|jetpack|tensorrt|trtllm|jetson|raspberry|raspi|"
    r"bcm27|nvidia|nvpmodel)|(?<![A-Za-z])(?:orin|rpi|pi5)(?![a-z])")
# where a word is the shared language, not a plug-in's (module -> words, why)
SPOKEN_HERE = {
    # GGUF is a model file format (Engine.model_format), taken by more than one engine:
    # the model pipeline fetches and names such files, the device stores them by it
    "model/pipeline.py": {"gguf"},
    "model/catalog.py": {"gguf"},
    "device/release_tool.py": {"gguf"},
    # the one engine-specific part of the device package: TensorRT-LLM's on-device build
    # tool (edge-llm-trtllm), run by the inference role's build unit
    "device/trtllm.py": {"trtllm", "l4t"},
    "device/__init__.py": {"trtllm"},
    # and TensorRT Edge-LLM's (edge-llm-edgellm, its adapter edgellm_serve); the engine
    # cache both build into (it reads the L4T release an engine is tied to, and finds a
    # TensorRT-LLM release made before engine/build.json by its old file)
    "device/edgellm.py": {"tensorrt", "l4t"},
    "device/edgellm_serve.py": {"cuda"},
    "device/engine_cache.py": {"l4t", "tegra", "trtllm"},
    # GPU_STACK: the words an engine and a target share for a GPU vendor's software (an
    # engine says what it needs in them, a target maps them to its vendor's packages)
    "contracts.py": {"cuda", "tensorrt"},
}


def spoken(source: str) -> list[tuple[int, str]]:
    """(line, word) of each plug-in word in an identifier or a token-like string."""
    found = []
    for node in ast.walk(ast.parse(source)):
        texts: list[str] = []
        if isinstance(node, ast.Name):
            texts = [node.id]
        elif isinstance(node, ast.Attribute):
            texts = [node.attr]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            texts = [node.name]
        elif isinstance(node, (ast.arg, ast.keyword)):
            texts = [node.arg or ""]
        elif isinstance(node, ast.alias):
            texts = [node.name, node.asname or ""]
        elif isinstance(node, ast.ImportFrom) and node.module:
            texts = [node.module]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and not re.search(r"\s", node.value):
            texts = [node.value]  # a name, a path, a flag; prose has spaces
        found += [(node.lineno, m.group(0).lower()) for t in texts
                  for m in VOCABULARY.finditer(t)]
    return found


def reaches(source: str) -> list[tuple[int, str]]:
    """(line, section) of each attribute named after a plug-in's own section."""
    return [(n.lineno, n.attr) for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Attribute) and n.attr in SECTIONS]


@pytest.mark.parametrize("module", modules(), ids=lambda f: str(f.relative_to(PKG)))
def test_no_module_outside_the_seams_reaches_into_a_plugins_section(module: Path) -> None:
    assert reaches(module.read_text()) == [], (
        f"{module.relative_to(PKG)} reads a plug-in's own section; let the plug-in read "
        "it (settings_of) and hand over what is needed")


@pytest.mark.parametrize("module", modules(), ids=lambda f: str(f.relative_to(PKG)))
def test_no_module_outside_the_seams_speaks_a_plugins_vocabulary(module: Path) -> None:
    rel = str(module.relative_to(PKG))
    words = [(line, w) for line, w in spoken(module.read_text())
             if w not in SPOKEN_HERE.get(rel, set())]
    assert words == [], f"{rel} speaks a target's or an engine's language: move it there"


def test_the_vocabulary_allowances_are_still_needed() -> None:
    """An allowance nothing uses any more is taken away."""
    for rel, allowed in SPOKEN_HERE.items():
        words = {w for _, w in spoken((PKG / rel).read_text())}
        assert allowed <= words, (rel, allowed - words)


@pytest.mark.parametrize(("snippet", "word"), [
    ("x = p.engine.llama_cpp.source\n", None),
    ("if s.cuda_arch:\n    pass\n", "cuda"),
    ("path = root / 'model.gguf'\n", "gguf"),
    ("from .rootfs import l4t\n", "l4t"),
    ("def orin_power(): pass\n", "orin"),
])
def test_the_vocabulary_guard_sees_each_kind(snippet: str, word: str | None) -> None:
    if word is None:
        assert reaches(snippet) == [(1, "llama_cpp")]
    else:
        assert word in {w for _, w in spoken(snippet)}, snippet


def test_the_vocabulary_guard_leaves_prose_and_neighbours() -> None:
    assert spoken('raise E("llama-server refused it: see docs/orin.md")\n'
                  'class VendorInput: pass\nprint("origin", "Porinda")\n') == []
