"""A minimal value valid for a JSON Schema: what the simulator puts in tool arguments and structured output.

The rule, deterministic so tests can predict it: ``const``, else the first ``enum`` value, else
``default``, else the first of ``examples``; otherwise by type: an object holds its ``required``
properties only (each generated the same way), an array ``minItems`` items, a string ``"sim"`` (padded
or cut to ``minLength``/``maxLength``; ``date``, ``date-time``, ``email``, ``uri`` and ``uuid`` formats get
a fixed valid value), a number or integer the smallest allowed value at or above 0 (within ``minimum``/
``maximum``, ``multipleOf`` respected for integers), a boolean ``true``, null ``null``. ``$ref`` (local),
``anyOf``/``oneOf`` (first branch) and ``allOf`` (objects merged) are followed. ``pattern`` is not honoured.
"""

from __future__ import annotations

import math
from typing import Any

STRING = "sim"
FORMATS = {
    "date": "2026-01-01",
    "date-time": "2026-01-01T00:00:00Z",
    "time": "00:00:00Z",
    "email": "sim@example.com",
    "uri": "https://example.com/sim",
    "url": "https://example.com/sim",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
_MAX_DEPTH = 32


class UnsupportedSchema(ValueError):
    """The schema is not one the simulator can produce a value for (a bad ``$ref``, or nesting too deep)."""


def minimal_value(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A minimal value valid for ``schema`` (``root`` resolves local ``$ref``s; the schema itself by default)."""
    if depth > _MAX_DEPTH:
        raise UnsupportedSchema("schema nests too deep (or its $refs loop)")
    root = schema if root is None else root
    if schema is True or not isinstance(schema, dict):
        return {}
    if "const" in schema:
        return schema["const"]
    for keyword in ("enum", "default", "examples"):
        if keyword in schema:
            value = schema[keyword]
            if keyword == "default":
                return value
            if isinstance(value, list) and value:
                return value[0]
    if "$ref" in schema:
        return minimal_value(_resolve(root, schema["$ref"]), root, depth + 1)
    for keyword in ("anyOf", "oneOf"):
        if isinstance(schema.get(keyword), list) and schema[keyword]:
            return minimal_value(schema[keyword][0], root, depth + 1)
    if isinstance(schema.get("allOf"), list):
        return _merged([minimal_value(part, root, depth + 1) for part in schema["allOf"]])
    return _typed(schema, _type_of(schema), root, depth)


def _type_of(schema: dict[str, Any]) -> str:
    declared = schema.get("type")
    if isinstance(declared, list):
        declared = next((t for t in declared if t != "null"), "null")
    if isinstance(declared, str):
        return declared
    return "object" if "properties" in schema or "required" in schema else "string"


def _typed(schema: dict[str, Any], kind: str, root: Any, depth: int) -> Any:
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: minimal_value(properties.get(name, {}), root, depth + 1) for name in schema.get("required", [])}
    if kind == "array":
        return [minimal_value(schema.get("items", {}), root, depth + 1) for _ in range(schema.get("minItems", 0))]
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema)


def _string(schema: dict[str, Any]) -> str:
    value = FORMATS.get(str(schema.get("format")), STRING)
    low = int(schema.get("minLength", 0))
    value = value + "m" * max(0, low - len(value))
    high = schema.get("maxLength")
    return value[: int(high)] if isinstance(high, int) else value


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    low: float = 0
    if isinstance(schema.get("minimum"), int | float):
        low = schema["minimum"]
    if isinstance(schema.get("exclusiveMinimum"), int | float):
        low = max(low, schema["exclusiveMinimum"] + (1 if integer else 0.5))
    high = schema.get("maximum")
    if isinstance(high, int | float) and low > high:
        low = high  # a range entirely below 0: its top
    step = schema.get("multipleOf")
    if integer:
        value = math.ceil(low)
        if isinstance(step, int) and step > 0:
            value = math.ceil(value / step) * step
        return value
    return low


def _merged(parts: list[Any]) -> Any:
    if parts and all(isinstance(part, dict) for part in parts):
        merged: dict[str, Any] = {}
        for part in parts:
            merged.update(part)
        return merged
    return parts[0] if parts else {}


def _resolve(root: Any, ref: Any) -> Any:
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise UnsupportedSchema(f"only local $refs are followed, not {ref!r}")
    target = root
    for part in ref.removeprefix("#").strip("/").split("/"):
        if not part:
            continue
        key = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(target, dict) or key not in target:
            raise UnsupportedSchema(f"$ref {ref!r} points at nothing")
        target = target[key]
    return target
