"""The package layers: each imports only the layers below it, and nothing imports in a cycle.

    pipeline.core                              imports nothing else of ours
    pipeline.exchange | .kafka | .storage      core only; siblings never import each other
    pipeline.runtime                           the layers above, wired together
    api                                        the HTTP control plane, on top of everything
    devtools                                   development only: the product never imports it

Every import counts, also one inside a function or under TYPE_CHECKING: a lazy import is still a
dependency, and a cycle through one breaks the first time the other order is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "api", "devtools")

# What each layer may import from (itself always included).
ALLOWED: dict[str, set[str]] = {
    "pipeline.core": set(),
    "pipeline.exchange": {"pipeline.core"},
    "pipeline.kafka": {"pipeline.core"},
    "pipeline.storage": {"pipeline.core"},
    "pipeline.runtime": {
        "pipeline.core",
        "pipeline.exchange",
        "pipeline.kafka",
        "pipeline.storage",
    },
    "api": {
        "pipeline.core",
        "pipeline.exchange",
        "pipeline.kafka",
        "pipeline.storage",
        "pipeline.runtime",
    },
    "devtools": {
        "pipeline.core",
        "pipeline.exchange",
        "pipeline.kafka",
        "pipeline.storage",
        "pipeline.runtime",
    },
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_modules() -> dict[str, Path]:
    return {
        module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def imports_of(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The modules of ours that `name` imports, resolved to a module that exists."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import module` imports the module; `from module import name` does not.
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            # A package is imported before its modules anyway: not an edge of its own.
            if target and not (name == target or name.startswith(target + ".")):
                yield target


def layer_of(module: str) -> str | None:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def import_graph() -> dict[str, set[str]]:
    modules = our_modules()
    known = set(modules)
    return {name: set(imports_of(name, path, known)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_belongs_to_a_layer() -> None:
    assert [name for name in our_modules() if layer_of(name) is None] == ["pipeline"]


def test_no_module_imports_against_the_layer_order() -> None:
    wrong = []
    for name, targets in import_graph().items():
        layer = layer_of(name)
        if layer is None:
            continue
        for target in targets:
            target_layer = layer_of(target)
            if target_layer not in (layer, None) and target_layer not in ALLOWED[layer]:
                wrong.append(f"{name} imports {target}")
    assert sorted(wrong) == []


def test_nothing_imports_in_a_cycle() -> None:
    assert find_cycle(import_graph()) is None


def test_the_product_never_imports_development_tools() -> None:
    product = {"pipeline", "api"}
    offenders = [
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if name.split(".")[0] in product
        for target in targets
        if target.split(".")[0] == "devtools"
    ]
    assert offenders == []


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ],
)
def test_find_cycle_finds_exactly_the_cycles(
    graph: dict[str, set[str]], cycle: list[str] | None
) -> None:
    assert find_cycle(graph) == cycle
