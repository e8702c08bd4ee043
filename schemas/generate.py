"""Writes the JSON Schema of each public message to schemas/json/ (run: python -m schemas.generate)."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
from pydantic import BaseModel

from schemas.models import Alert, CompletionJob, CompletionResult, ProviderCallRecord, UsageEvent

SCHEMA_DIR = Path(__file__).parent / "json"
MODELS: dict[str, type[BaseModel]] = {
    "completion_job.v1.schema.json": CompletionJob,
    "completion_result.v1.schema.json": CompletionResult,
    "usage_event.v1.schema.json": UsageEvent,
    "alert.v1.schema.json": Alert,
    "provider_call.v1.schema.json": ProviderCallRecord,
}


def render(model: type[BaseModel]) -> bytes:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for filename, model in MODELS.items():
        (SCHEMA_DIR / filename).write_bytes(render(model))
        print(f"wrote schemas/json/{filename}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
