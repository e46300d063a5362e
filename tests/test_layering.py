"""Layering: no import cycle between the package's modules (lazy imports inside functions included, since
a cycle through a lazy import is still two modules that each need the other), each module imports only
from its own layer or the ones below, and the library never imports the CLI. docs/architecture.md ("Layers")
names the same modules per layer, checked here too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "simplematch"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"
# Lowest first; docs/architecture.md lists the same layers (checked below). A name covers its sub-modules.
LAYERS = [
    ["config", "validate", "errors", "files", "extras", "progress", "keypoints", "image", "metadata"]
    + ["geometry", "confidence", "provenance", "calibration", "resources", "outputs", "signals", "runlock"]
    + ["quiet", "shutdown"],
    ["data"],
    ["metrics"],
    ["model", "weights", "checkpoint", "matching", "runtime.matching"],
    ["runtime", "evaluation.runtime_predictor"],
    ["distributed", "evaluation.torch_predictor", "train"],
    ["export"],
    ["evaluation", "calibrate", "plots", "baselines", "official", "bench", "demo", "serve"],
    ["cli"],
]


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest name covering ``module`` (``simplematch`` itself: -1)."""
    name = module.removeprefix("simplematch").lstrip(".")
    best = (-1, -1)
    for i, names in enumerate(LAYERS):
        for n in names:
            if (name == n or name.startswith(n + ".")) and len(n) > best[1]:
                best = (i, len(n))
    return best[0]


def module_names() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its body (``from pkg import submodule`` is an
    edge to the submodule, not to the package)."""
    mods = module_names()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    head = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(head + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for name in names:
                target = owner(name) if name.startswith("simplematch") else None
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_package_modules() -> None:
    assert cycles(import_graph()) == []


def test_every_module_has_a_layer_and_imports_only_from_its_layer_or_below() -> None:
    graph = import_graph()
    assert [m for m in graph if m != "simplematch" and layer_of(m) < 0] == []
    upward = [f"{m} -> {t}" for m, targets in graph.items() for t in targets if layer_of(t) > layer_of(m)]
    assert upward == []
    assert layer_of("simplematch.runtime.matching") == 3 and layer_of("simplematch.runtime.infer") == 4
    # The evaluation package spans layers: each predictor sits with what it predicts with.
    assert layer_of("simplematch.evaluation.runtime_predictor") == 4
    assert layer_of("simplematch.evaluation.torch_predictor") == 5
    assert layer_of("simplematch.evaluation.dispatch") == layer_of("simplematch.evaluation") == 7


def test_the_library_never_imports_the_cli() -> None:
    graph = import_graph()
    offenders = {
        mod: sorted(t for t in targets if t.startswith("simplematch.cli"))
        for mod, targets in graph.items()
        if not mod.startswith("simplematch.cli")
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def doc_layer_rows(text: str) -> list[list[str]]:
    """The "modules" column of docs/architecture.md's layer table: the backticked names of each row."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| layer")]
    return [re.findall(r"`([^`]+)`", row.split("|")[2]) for row in rows]


def as_doc_name(name: str) -> str:
    """``runtime.matching`` -> ``runtime/matching.py``; a package -> ``data/`` (how the doc names modules)."""
    path = name.replace(".", "/")
    return f"{path}/" if (PACKAGE / path).is_dir() else f"{path}.py"


def test_the_architecture_doc_lists_the_same_layers() -> None:
    doc = doc_layer_rows(ARCHITECTURE.read_text())
    assert len(doc) == len(LAYERS), f"docs/architecture.md has {len(doc)} layer rows, LAYERS {len(LAYERS)}"
    for i, (names, row) in enumerate(zip(LAYERS, doc, strict=True)):
        want = sorted(as_doc_name(n) for n in names)
        assert sorted(row) == want, f"docs/architecture.md layer row {i + 1}: {sorted(row)} != {want}"
    for names in LAYERS:  # every name in LAYERS is a real module or package
        assert all((PACKAGE / as_doc_name(n)).exists() for n in names), names
