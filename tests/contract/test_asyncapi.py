"""``schemas/asyncapi.yaml``: as generated (no drift), valid against the AsyncAPI 3.0.0 specification's own
JSON Schema (vendored unmodified in ``definitions/``, from the ``@asyncapi/specs`` package), while broken copies
are not; every exchange, route and JSON Schema is in it, and every reference in it resolves."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from pydantic import BaseModel, ConfigDict

from schemas.generate import MODELS, SCHEMA_DIR
from schemas.models import Status
from worker.broker import asyncapi
from worker.broker.messages import message_routes
from worker.broker.names import Topology
from worker.broker.topology import ExchangeSpec, TopologySpec

DEFINITIONS = Path(__file__).resolve().parent / "definitions"
SPEC_FILE = DEFINITIONS / "asyncapi-3.0.0.schema.json"
SPEC_SHA256 = "d4571a420e6ffb7fcc7066c95a6db1202f299a3c51daa103d0706bf30f95e626"


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    assert hashlib.sha256(SPEC_FILE.read_bytes()).hexdigest() == SPEC_SHA256, "the vendored schema was modified"
    spec = json.loads(SPEC_FILE.read_text())
    Draft7Validator.check_schema(spec)
    return Draft7Validator(spec)


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(asyncapi.DOCUMENT.read_text())
    return loaded


def errors(validator: Draft7Validator, document: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(document)]


def test_the_committed_document_is_what_make_schemas_generates() -> None:
    assert asyncapi.DOCUMENT.read_text() == asyncapi.render(), "schemas/asyncapi.yaml is stale: run `make schemas`"
    assert asyncapi.main(["--check"]) == 0


def test_the_document_is_valid_asyncapi_3(validator: Draft7Validator, committed: dict[str, Any]) -> None:
    assert committed["asyncapi"] == "3.0.0"
    assert errors(validator, committed) == []
    print(f"\nschemas/asyncapi.yaml: valid AsyncAPI 3.0.0; {len(committed['channels'])} channels, "
          f"{len(committed['components']['messages'])} messages, {len(committed['operations'])} operations")


def broken_copies(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    broken = copy.deepcopy(document)
    next(iter(broken["operations"].values()))["action"] = "publish"  # AsyncAPI 2's verb, not 3's
    yield "an operation's action", broken
    broken = copy.deepcopy(document)
    broken["channels"]["jobs"]["bindings"]["amqp"]["exchange"]["type"] = "queue"
    yield "an exchange type", broken
    broken = copy.deepcopy(document)
    del broken["info"]["version"]
    yield "info without a version", broken
    broken = copy.deepcopy(document)
    broken["channels"]["results"]["messages"]["result"] = "byok.completion_result.v1"
    yield "a message that is not an object", broken


def test_broken_copies_fail_validation(validator: Draft7Validator, committed: dict[str, Any]) -> None:
    for what, broken in broken_copies(committed):
        assert errors(validator, broken), f"a copy with a broken {what} passed validation"


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_every_reference_resolves(committed: dict[str, Any]) -> None:
    found = list(refs(committed))
    for ref in found:
        if ref.startswith("#/"):
            node: Any = committed
            for part in ref[2:].split("/"):
                assert isinstance(node, dict) and part in node, f"{ref} does not resolve in the document"
                node = node[part]
        else:
            assert ref.startswith("./json/") and (SCHEMA_DIR / ref.removeprefix("./json/")).is_file(), ref
    schema_refs = {ref.removeprefix("./json/") for ref in found if ref.startswith("./json/")}
    assert schema_refs == set(MODELS), "every JSON Schema is a message's payload"


def test_every_exchange_and_route_is_in_the_document(committed: dict[str, Any]) -> None:
    names = Topology()
    spec = asyncapi._whole_topology(names)
    titles = {channel["title"] for channel in committed["channels"].values()}
    assert {exchange.name for exchange in spec.exchanges} <= titles
    for channel_id, channel in committed["channels"].items():
        assert channel.get("messages"), f"channel {channel_id} carries no message: add its route to messages.py"
    for route in message_routes(names):
        channel = committed["channels"][asyncapi.channel_id(route.exchange, names, route.routing_key)]
        assert route.message in channel["messages"]
        if channel["address"] is None and "x-byok-routing-keys" in channel:  # several key patterns on one exchange
            assert channel["x-byok-routing-keys"][route.message] == route.routing_key
        else:
            assert channel["address"] == route.routing_key
    queues = {queue["queue"] for channel in committed["channels"].values()
              for queue in channel.get("x-byok-queues", [])}
    assert queues == {queue.name for queue in spec.queues}, "every queue of the topology, and only those"
    overflow = committed["channels"]["jobs_overflow"]
    assert overflow["address"] == names.overflow_queue and set(overflow["messages"]) == {"moved_job"}
    results = committed["channels"]["results"]
    assert results["address"] == "{workspace_id}.{automation_id}.{status}"
    assert results["parameters"]["status"]["enum"] == [status.value for status in Status]


class ExampleMessage(BaseModel):
    """A message another branch might add."""

    model_config = ConfigDict(extra="forbid")
    example_id: str


def test_new_models_and_exchanges_are_picked_up_without_edits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS, "example.v1.schema.json", ExampleMessage)
    real_topology = asyncapi.deployed_topology

    def with_another_exchange(names: Topology, *, delivery_limit: int) -> TopologySpec:
        spec = real_topology(names, delivery_limit=delivery_limit)
        return TopologySpec((*spec.exchanges, ExchangeSpec(f"{names.prefix}.calls", "topic")), spec.queues,
                            spec.bindings)

    monkeypatch.setattr(asyncapi, "deployed_topology", with_another_exchange)
    document = asyncapi.document()
    message = document["components"]["messages"]["example_v1"]
    assert message["payload"]["schema"] == {"$ref": "./json/example.v1.schema.json"}
    assert document["channels"]["calls"]["title"] == "byok.calls"
    assert "messages" not in document["channels"]["calls"], "a channel without a route is visible as such"
