"""deploy/compose.yaml: valid Compose Specification, and the stack it describes holds together.

``docker compose config`` needs the compose plugin, which this machine's docker client lacks (and no
engine runs here), so the file is validated against the Compose Specification's JSON Schema as vendored
in the ``check-jsonschema`` wheel (the same schema `docker compose` embeds), then checked structurally.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.conftest import DEPLOY, REPO
from worker.aggregator.settings import AggregatorSettings
from worker.settings import Settings

COMPOSE_PATH = DEPLOY / "compose.yaml"
BYOK_SERVICES = ("setup-rabbitmq", "setup-topology", "worker", "aggregator", "simulator")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_PATH.read_text())
    return loaded


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def errors(validator: jsonschema.protocols.Validator, document: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_matches_the_compose_specification(
    compose: dict[str, Any], validator: jsonschema.protocols.Validator
) -> None:
    assert errors(validator, compose) == []


def test_the_schema_check_catches_mistakes(compose: dict[str, Any], validator: jsonschema.protocols.Validator) -> None:
    misspelt = copy.deepcopy(compose)
    misspelt["services"]["worker"]["stop_grace_periodd"] = "45s"
    assert errors(validator, misspelt)
    wrong_type = copy.deepcopy(compose)
    wrong_type["services"]["worker"]["volumes"] = {"approle": "/run/byok"}  # a list, not a map
    assert errors(validator, wrong_type)


def test_the_stack_has_every_component(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"rabbitmq", "vault", "postgres", "setup", "setup-rabbitmq", "setup-topology", "worker",
                             "aggregator", "simulator"}
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3") and "management" in services["rabbitmq"]["image"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert "openbao" in services["vault"]["image"] and "-dev" in services["vault"]["command"]
    assert services["simulator"]["profiles"] == ["sim"]
    assert services["simulator"]["command"][0] == "simulate-provider"
    assert all("profiles" not in s for name, s in services.items() if name != "simulator")


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = re.sub(r"\$\{[A-Z_]+:-([^}]+)\}", r"\1", service["image"])
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), f"{name}: {image}"


def test_workers_scale(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker and "hostname" not in worker
    assert worker["command"] == ["worker"]
    assert worker["environment"]["BYOK_METRICS_LISTEN"] == "0.0.0.0:9464"
    assert "9464/readyz" in " ".join(worker["healthcheck"]["test"])
    grace = float(worker["environment"]["BYOK_SHUTDOWN_GRACE_S"])
    assert _seconds(worker["stop_grace_period"]) >= grace + 10


def test_byok_containers_run_like_the_k8s_pods(compose: dict[str, Any]) -> None:
    for name in BYOK_SERVICES:
        service = compose["services"][name]
        assert service["user"] == "10001:10001", name
        assert service["read_only"] is True and service["tmpfs"] == ["/tmp"], name
        assert service["cap_drop"] == ["ALL"] and "cap_add" not in service, name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}, name
        assert (COMPOSE_PATH.parent / service["build"]["context"] / service["build"]["dockerfile"]).is_file()


def test_setup_runs_before_the_processes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    setup = services["setup"]
    assert setup["entrypoint"] == ["/bin/sh", "/deploy/vault/setup.sh"]
    assert setup["depends_on"] == {"vault": {"condition": "service_healthy"}}
    rabbit_setup = services["setup-rabbitmq"]
    assert rabbit_setup["entrypoint"] == ["python", "/deploy/rabbitmq/render_definitions.py"]
    assert "--passwords-from-env" in rabbit_setup["command"]
    for one_shot in (setup, rabbit_setup):
        assert one_shot["restart"] == "no"
        for volume in one_shot["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (COMPOSE_PATH.parent / source).is_dir(), volume
                script = one_shot["entrypoint"][-1]
                if script.startswith(target):
                    assert (COMPOSE_PATH.parent / source / Path(script).relative_to(target)).is_file()
    done = {"condition": "service_completed_successfully"}
    # The worker also reserves budgets in the aggregator's PostgreSQL store, so it waits for it too.
    assert services["worker"]["depends_on"] == {"setup": done, "setup-topology": done,
                                                "postgres": {"condition": "service_healthy"}}
    store_urls = {services[name]["environment"]["BYOK_STORE_URL"] for name in ("worker", "aggregator")}
    assert len(store_urls) == 1, "the workers reserve budgets in the aggregator's store"
    # The topology is declared by its own broker user, after the users exist; the workers' user only checks it.
    topology = services["setup-topology"]
    assert topology["command"] == ["topology", "declare"] and topology["restart"] == "no"
    assert topology["depends_on"] == {"setup-rabbitmq": done}
    assert topology["environment"]["BYOK_AMQP_URL"].startswith("amqp://byok-topology:")
    assert services["worker"]["environment"]["BYOK_DECLARE_TOPOLOGY"] == "false"
    assert topology["environment"]["BYOK_DELIVERY_LIMIT"] == services["worker"]["environment"]["BYOK_DELIVERY_LIMIT"]
    assert services["aggregator"]["depends_on"]["setup-rabbitmq"] == done
    # The AppRole files the setup writes are what the worker reads.
    assert setup["environment"]["BYOK_ROLE_ID_FILE"] in services["worker"]["entrypoint"][2]
    assert setup["environment"]["BYOK_SECRET_ID_FILE"] in services["worker"]["entrypoint"][2]
    assert "approle:/run/byok:ro" in services["worker"]["volumes"]
    assert services["worker"]["environment"]["BYOK_VAULT_AUTH"] == "approle"


def test_each_process_connects_as_its_own_broker_user(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["worker"]["environment"]["BYOK_AMQP_URL"].startswith("amqp://byok-worker:")
    assert services["aggregator"]["environment"]["BYOK_AMQP_URL"].startswith("amqp://byok-aggregator:")
    assert services["aggregator"]["environment"]["BYOK_STORE_URL"].startswith("postgresql://")


def test_settings_names_are_real(compose: dict[str, Any]) -> None:
    known = {f"BYOK_{field.upper()}" for field in (*Settings.model_fields, *AggregatorSettings.model_fields)}
    for name in ("worker", "aggregator", "setup-topology"):
        assert set(compose["services"][name]["environment"]) <= known, name


def test_every_variable_is_in_the_example_env_file() -> None:
    used = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE_PATH.read_text()))
    example = DEPLOY / "compose.env.example"
    listed = set(re.findall(r"^#? ?([A-Z_]+)=", example.read_text(), re.M))
    assert used <= listed, f"not documented in {example.name}: {used - listed}"
    # Required ones fail loudly when unset instead of running with an empty password.
    text = COMPOSE_PATH.read_text()
    for secret in ("RABBITMQ_ADMIN_PASSWORD", "POSTGRES_PASSWORD", "VAULT_DEV_ROOT_TOKEN",
                   "BYOK_RABBIT_WORKER_PASSWORD", "BYOK_RABBIT_AGGREGATOR_PASSWORD"):
        assert f"${{{secret}:?" in text, secret


def test_dockerignore_keeps_what_the_image_needs_and_nothing_else() -> None:
    rules = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:
        """Docker's rule: the last pattern matching the path (or a parent directory of it) decides."""
        verdict = False
        for rule in rules:
            if re.fullmatch(_glob(rule.lstrip("!").rstrip("/")) + "(?:/.*)?", path):
                verdict = not rule.startswith("!")
        return verdict

    for needed in ("pyproject.toml", "README.md", "worker/cli/main.py", "worker/data/prices.json", "schemas/models.py"):
        assert not ignored(needed), needed
        assert (REPO / needed).exists(), needed
    for unwanted in (".git/config", ".venv/bin/python", "tests/conftest.py", "deploy/compose.yaml",
                     "worker/__pycache__/cli.cpython-311.pyc", ".env", "deploy/.env"):
        assert ignored(unwanted), unwanted


def _glob(pattern: str) -> str:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return float(match[1]) * (60 if match[2] == "m" else 1)
