"""The providers' own published definitions, loaded once per session.

OpenAI and Mistral: their OpenAPI 3.1 documents, vendored unmodified in ``definitions/`` (schemas are JSON Schema
2020-12), validated with ``jsonschema``, ``$ref``s resolved inside the document by ``referencing``.
Anthropic and Ollama: the types of their official Python packages, validated with pydantic (strict).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from pydantic import BaseModel
from referencing import Registry
from referencing.jsonschema import DRAFT202012

DEFINITIONS_DIR = Path(__file__).resolve().parent / "definitions"
OPENAI_SPEC = "openai-openapi.yaml"
MISTRAL_SPEC = "mistral-openapi.yaml"


def contract_path(name: str) -> Path:
    path = DEFINITIONS_DIR / name
    if not path.is_file():
        pytest.fail(f"provider definition {path} is missing (see tests/contract/definitions/README.md)", pytrace=False)
    return path


@cache
def load_spec(name: str) -> dict[str, Any]:
    with contract_path(name).open("rb") as handle:
        loaded = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - safe loaders only
    assert isinstance(loaded, dict) and loaded.get("openapi", "").startswith("3.1"), name
    return loaded


def _validator(spec_name: str, spec: dict[str, Any], schema_name: str) -> Draft202012Validator:
    assert schema_name in spec["components"]["schemas"], f"{schema_name} is not defined in {spec_name}"
    uri = f"urn:byok-contract:{spec_name}"
    registry: Registry[Any] = Registry().with_resource(uri, DRAFT202012.create_resource(spec))
    return Draft202012Validator({"$ref": f"{uri}#/components/schemas/{schema_name}"}, registry=registry)


@cache
def openapi_validator(spec_name: str, schema_name: str) -> Draft202012Validator:
    return _validator(spec_name, load_spec(spec_name), schema_name)


def mistral_response_quirk(spec: dict[str, Any]) -> list[Any]:
    """Mistral's ``ChatCompletionResponse`` lists ``data`` as required but defines no such property
    (a defect of the published document: its own SDK and API have no ``data`` on chat completions)."""
    required = spec["components"]["schemas"]["ChatCompletionResponse"]["allOf"][1]["required"]
    assert isinstance(required, list)
    return required


@cache
def mistral_response_validator() -> Draft202012Validator:
    spec = copy.deepcopy(load_spec(MISTRAL_SPEC))
    required = mistral_response_quirk(spec)
    required.remove("data")
    return _validator(MISTRAL_SPEC, spec, "ChatCompletionResponse")


def errors(validator: Draft202012Validator, instance: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}"
            for e in validator.iter_errors(instance)]


def declared_properties(spec: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    """Property names a schema declares, through ``allOf`` and local ``$ref``s."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = spec["components"]["schemas"][name]
    names = set(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        names |= declared_properties(spec, part)
    return names


def materialize(value: Any) -> Any:
    """pydantic validates ``Iterable[...]`` fields lazily: consume them so every item is checked."""
    if isinstance(value, Mapping):
        return {k: materialize(v) for k, v in value.items()}
    if isinstance(value, BaseModel):
        return value
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return [materialize(v) for v in value]
    return value


def unknown_keys(body: Mapping[str, Any], known: Iterable[str]) -> set[str]:
    return set(body) - set(known)
