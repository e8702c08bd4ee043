"""The package's layers: no module imports from a layer above its own (README, "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Lowest first. A module may import from its own layer and the ones before it, never from a later one.
LAYERS = (
    ("schemas",),
    ("worker.settings", "worker.redaction", "worker.logging_setup", "worker.event_loop", "worker.failures", "worker"),
    ("worker.broker",),
    ("worker.client",),
    ("worker.keys",),
    ("worker.providers",),
    # The store's foundations (SQL backends, migrations, plain records, the price table): the worker's
    # budgets reserve against the same store and price with the same table as the aggregator.
    ("worker.aggregator.db", "worker.aggregator.migrations", "worker.aggregator.records", "worker.aggregator.pricing"),
    ("worker.budgets",),
    ("worker.jobs",),
    ("worker.aggregator",),
    ("worker.testing",),
    ("worker.cli",),
)


def layer_of(module: str) -> int:
    best: tuple[int, int] | None = None  # (length of the matching prefix, layer)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS"
    return best[1]


def modules() -> list[tuple[str, Path]]:
    found = []
    for package in ("worker", "schemas"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found.append((".".join(parts), path))
    return found


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in {"worker", "schemas"}}


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_no_module_imports_from_a_layer_above_it(module: str, path: Path) -> None:
    own = layer_of(module)
    above = sorted(name for name in imported(path) if layer_of(name) > own)
    assert not above, f"{module} (layer {own}) imports from a layer above it: {above}"


def test_the_layer_rule_can_fail() -> None:
    assert layer_of("worker.jobs.pipeline") > layer_of("worker.providers.openai") > layer_of("worker.failures")
    assert layer_of("worker.cli.main") == len(LAYERS) - 1
