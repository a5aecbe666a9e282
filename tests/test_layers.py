"""Layers point one way (issue 15): each package imports only the layers below it, and the modules of
one package (activities/, rehearsal/...) import each other without cycles.

Every import counts, wherever it is: at the top, inside a function, under `TYPE_CHECKING` or in a
workflow's `imports_passed_through()` block, because each of them is a dependency someone must
follow to understand or package the module (the bootstrap Lambda may need only core/ and bootstrap/).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# layer -> what else of ours it may import (itself always): a layer, or one module of one
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "activities": {"core", "replication"},
    "replication": {"core"},  # the registry replication engine; activities/registry*.py are its front
    "workflows": {"core", "activities"},  # activities' input and result types, through the sandbox
    "bootstrap": {"core"},
    "rehearsal": {"core"},
    "simulator": {"core", "rehearsal.pki"},  # `fleet provision` makes the demo CA and device keys
    "cli": {"core", "activities", "replication", "workflows", "bootstrap", "rehearsal", "simulator"},
    # the fault campaign assembles the stack as tests/e2e_stack.py does, and reads the bootstrap
    # tables with the bootstrap service's own logic
    "chaos": {"core", "activities", "workflows", "bootstrap", "rehearsal", "simulator", "worker"},
}
OURS = set(ALLOWED) | {"starter", "worker", "deploy", "bench", "tests"}
# no import cycle among the modules of each
ACYCLIC = (
    "activities",
    "bootstrap",
    "chaos",
    "cli",
    "core",
    "rehearsal",
    "replication",
    "simulator",
    "workflows",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in `source`, at any depth."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if is_module(sub) else base


def files(layer: str) -> list[Path]:
    return sorted(p for p in (ROOT / layer).rglob("*.py") if ".venv" not in p.parts)


def scanned(layer: str) -> Iterator[tuple[Path, int, str]]:
    for path in files(layer):
        module = module_name(path)
        for line, target in imports(path.read_text(), module, path.name == "__init__.py"):
            yield path, line, target


def test_the_scanner_sees_imports_at_every_depth() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from activities.registry_sync import Replicator\n"
        "with workflow.unsafe.imports_passed_through():\n    from rehearsal import faults\n"
        "def f():\n    import bootstrap.records\n"
        "from .context import Deployments\n"
    )
    found = set(imports(source, "activities.certificates"))
    assert {
        (3, "activities.registry_sync"),
        (5, "rehearsal.faults"),
        (7, "bootstrap.records"),
        (8, "activities.context"),
    } <= found


def allowed(target: str, may: set[str]) -> bool:
    return target.split(".")[0] not in OURS or any(target == m or target.startswith(m + ".") for m in may)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_point_one_way(layer: str) -> None:
    may = ALLOWED[layer] | {layer}
    forbidden = [
        f"{path.relative_to(ROOT)}:{line}: imports {target} ({layer}/ may import "
        f"{', '.join(sorted(may))} of ours)"
        for path, line, target in dict.fromkeys(scanned(layer))
        if not allowed(target, may)
    ]
    assert not forbidden, "\n".join(forbidden)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("package", ACYCLIC)
def test_no_import_cycles_within(package: str) -> None:
    graph: dict[str, set[str]] = {module_name(p): set() for p in files(package)}
    where: dict[tuple[str, str], str] = {}
    for path, line, target in scanned(package):
        source = module_name(path)
        if target in graph and target != source:
            graph[source].add(target)
            where.setdefault((source, target), f"{path.relative_to(ROOT)}:{line}")
    problems = [
        "import cycle: "
        + "; ".join(
            f"{where[(a, b)]}: {a} imports {b}" for a in cycle for b in sorted(graph[a]) if b in cycle
        )
        for cycle in _cycles(graph)
    ]
    assert not problems, "\n".join(problems)


def test_the_simulator_waits_with_asyncio_timeout_only() -> None:
    """The same loss anywhere a device waits: `asyncio.timeout` delivers the cancel, `wait_for` may not."""
    users = [p.name for p in (ROOT / "simulator").glob("*.py") if "asyncio.wait_for(" in p.read_text()]
    assert users == []


def test_the_docs_point_only_inside_the_repository() -> None:
    """A reader of a clone (or of the image's docs) has no ../shared/: every pointer stays inside."""
    outside = [
        f"{p.relative_to(ROOT)}: {line.strip()}"
        for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        for line in p.read_text().splitlines()
        if re.search(r"\.\./shared|\.\./seed|DESIGN\.md|\]\(\.\./", line)
    ]
    assert outside == []
