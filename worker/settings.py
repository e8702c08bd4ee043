"""The ``BYOK_*`` settings (README): what every process shares, then each one's own, and their one loader.

- ``BrokerSettings``: the broker's URL, the topology prefix and how long to wait for the broker (a publisher
  using ``worker.client`` reads only these).
- ``ProcessSettings``: what every process that talks to the broker uses (its URL and names, logs,
  reconnecting, stopping).
- ``VaultSettings``: Vault's address and identity (the worker; ``byok keys`` loads only these).
- ``StoreSettings`` / ``ConsumptionSettings``: where consumption is stored, and the price table to cost it.
- ``ApiTokensSettings``: the aggregator API's tokens file (``byok tokens``, the aggregator).
- ``WorkerSettings`` here, ``AggregatorSettings`` in ``worker.aggregator.settings``.

Every command loads only the class it uses through ``load_settings``, which turns a refusal into one line
naming the variables (never their values).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.amqp_urls import parse_amqp_urls

ENV_PREFIX = "BYOK_"
LOG_LEVELS = ("debug", "info", "warning", "error")


class VaultAuthMethod(StrEnum):
    TOKEN = "token"  # noqa: S105 - a method name, not a secret
    APPROLE = "approle"
    KUBERNETES = "kubernetes"


PROVIDER_MAX_RESPONSE_BYTES = 8 * 1024 * 1024


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` of a ``*_LISTEN`` setting (``[::1]:80`` too); an empty host is loopback."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(listen: str) -> bool:
    """Whether a ``*_LISTEN`` address is reachable from this host only (127.0.0.0/8, ``::1``, ``localhost``)."""
    host, _ = split_listen(listen)
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _listen(value: str) -> str:
    try:
        _, port = split_listen(value)
    except ValueError:
        raise ValueError("expected host:port (port 0 for any free one)") from None
    if not 0 <= port <= 65535:
        raise ValueError("the port must be from 0 to 65535")
    return value


Listen = Annotated[str, AfterValidator(_listen)]


class _FromEnvironment(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")


class BrokerSettings(_FromEnvironment):
    """Where the broker is and what the topology is called: all a publisher (``worker.client``) reads."""

    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    topology_prefix: str = Field(default="byok", pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    reconnect_max_s: float = Field(
        default=60.0, gt=0, description="exit with status 1 when the broker stays unreachable this long"
    )

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: SecretStr) -> SecretStr:
        # One node or several, comma-separated (worker.amqp_urls); the messages never quote the value.
        parse_amqp_urls(value.get_secret_value())
        return value


class ProcessSettings(BrokerSettings):
    """What every process that talks to the broker uses."""

    shutdown_grace_s: float = Field(default=30.0, ge=0)
    log_level: str = "info"
    log_format: str = Field(default="json", pattern=r"^(json|console)$")

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
        return value.lower()


class VaultSettings(_FromEnvironment):
    vault_addr: str = "http://127.0.0.1:8200"
    vault_allow_plain_http: bool = False
    vault_auth: VaultAuthMethod = VaultAuthMethod.TOKEN
    vault_token: SecretStr | None = None
    vault_role_id: str | None = None
    vault_secret_id: SecretStr | None = None
    vault_approle_mount: str = "approle"
    vault_k8s_role: str | None = None
    vault_k8s_mount: str = "kubernetes"
    vault_k8s_jwt_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    vault_namespace: str | None = None
    vault_transit_mount: str = "transit"
    vault_key_prefix: str = Field(default="byok-ws-", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    vault_timeout_s: float = Field(default=10.0, gt=0)


class StoreSettings(_FromEnvironment):
    store_url: SecretStr = SecretStr("sqlite:///./byok.db")  # a PostgreSQL URL may carry a password


class ApiTokensSettings(_FromEnvironment):
    """Where the aggregator API's token hashes are (``byok tokens`` loads only this; the aggregator too)."""

    api_tokens_file: str | None = Field(
        default=None, description="JSON file of API token hashes and scopes (byok tokens create); unset: no tokens"
    )


class ConsumptionSettings(StoreSettings):
    """What reading consumption takes: the store and the price table (``byok consumption``, the aggregator)."""

    prices_file: str | None = None
    unreported_grace_s: float = Field(
        default=600.0, ge=0,
        description="a provider call still without its usage event this long after it started is reported in "
        "unreported_calls",
    )
    run_tag: str = Field(default="agent_run", min_length=1, max_length=64)
    """The job tag naming an agent run: the drivers report groups each automation's calls by its value."""


class TopologySettings(ProcessSettings):
    """``byok topology declare``: the broker, the prefix and the one topology argument that is a setting."""

    delivery_limit: int = Field(default=5, ge=1, description="quorum queue x-delivery-limit for byok.jobs")


class WorkerSettings(TopologySettings, VaultSettings, ConsumptionSettings):
    """``byok worker``. ``BYOK_STORE_URL`` and ``BYOK_PRICES_FILE`` are the aggregator's (one definition,
    shared): the worker reserves budgets in that store and prices calls with that table."""

    budget_lease_s: float = Field(
        default=60.0, gt=0, description="a reservation of a worker that stops renewing it counts as spent after this"
    )
    budget_refresh_s: float = Field(
        default=2.0, gt=0, description="a new or changed budget reaches the worker within this many seconds"
    )
    budget_fail_mode: Literal["closed", "open"] = "closed"

    prefetch: int = Field(default=64, ge=1, le=65535)
    sort_window: int = Field(
        default=256, ge=0, le=65535,
        description="jobs a worker holds beyond BYOK_PREFETCH to run round-robin by workspace; a workspace with "
                    "BYOK_PREFETCH jobs waiting has its next ones moved to byok.jobs.overflow; 0: queue order, "
                    "nothing moved",
    )
    cold_key_slots: int = Field(
        default=16, ge=0, le=65535,
        description="run slots at most for the first job of each workspace whose key had to be unsealed (new "
                    "to this worker); they take a free slot ahead of warm jobs; at most half of BYOK_PREFETCH; "
                    "0, or BYOK_SORT_WINDOW 0: no cold lane",
    )
    unseal_concurrency: int = Field(
        default=16, ge=1, le=1000, description="Vault calls at a time to unseal the keys of jobs not yet running",
    )
    declare_topology: bool = Field(
        default=True,
        description="declare the topology on each connection (needs configure permission); false: only check "
                    "that it exists (passive declarations), as `byok topology declare` made it",
    )

    unseal_cache_ttl_s: float = Field(default=300.0, ge=0)
    unseal_cache_size: int = Field(default=10_000, ge=1)

    provider_connect_timeout_s: float = Field(default=10.0, gt=0)
    provider_read_timeout_s: float = Field(default=600.0, gt=0)
    provider_max_connections: int = Field(default=1000, ge=1)
    # What one provider endpoint may cost the worker. The response cap stays well under RabbitMQ's default
    # max_message_size (16 MiB since 4.0), so a result carrying the answer can still be published.
    provider_max_response_bytes: int = Field(
        default=PROVIDER_MAX_RESPONSE_BYTES, ge=1024, description="a provider's answer, decoded, is refused above this"
    )
    provider_call_timeout_s: float = Field(
        default=300.0, gt=0, description="one provider call, request to last byte (the job's deadline may cut it)"
    )
    max_attempts: int = Field(default=4, ge=1, le=50)
    retry_base_delay_s: float = Field(default=1.0, gt=0)
    retry_max_delay_s: float = Field(default=300.0, gt=0)
    inline_retry_max_s: float = Field(
        default=2.0, ge=0, description="waits up to this long happen in-process; longer ones go to the delay queue"
    )
    max_retry_window_s: float = Field(
        default=900.0, gt=0, description="a job without a deadline stops retrying this long after it was first seen"
    )
    allowed_hosts: Annotated[frozenset[str] | None, NoDecode] = None

    call_records: bool = Field(
        default=True,
        description="publish a confirmed provider-call record before each provider call (unreported_calls); "
        "false only to measure what they cost (make bench P9)",
    )

    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    metrics_listen: Listen = "127.0.0.1:9464"

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            hosts = frozenset(h.strip().lower() for h in value.split(",") if h.strip())
            if not hosts:
                # Set but empty (a template left blank, a typo) must not quietly mean "every host".
                raise ValueError("BYOK_ALLOWED_HOSTS is set but names no host: list hosts, or unset it")
            return hosts
        return value


Settings = WorkerSettings
"""The name the worker's modules and the tests import."""

S = TypeVar("S", bound=BaseSettings)


class InvalidSettings(Exception):
    """One line: ``invalid settings: BYOK_X: <problem>; BYOK_Y: <problem>``, no value in it."""


def load_settings(kind: type[S]) -> S:
    """``kind`` from the environment; a refusal is ``InvalidSettings`` naming each variable, never its value."""
    try:
        return kind()
    except ValidationError as exc:
        raise InvalidSettings(f"invalid settings: {describe_errors(exc)}") from None


def describe_errors(exc: ValidationError) -> str:
    # Field names and messages only: pydantic's input echo could be a secret setting's value.
    problems = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        loc = error["loc"]
        problem = error["msg"].removeprefix("Value error, ")  # pydantic's prefix on our own validators' messages
        problems.append(f"{ENV_PREFIX}{str(loc[0]).upper()}: {problem}" if loc else problem)
    return "; ".join(problems)


def unknown_settings(kinds: Iterable[type[BaseSettings]], environ: Mapping[str, str] = os.environ) -> list[str]:
    """``BYOK_*`` variables that no setting of ``kinds`` reads: a typo silently ignored otherwise."""
    known = {f"{ENV_PREFIX}{name.upper()}" for kind in kinds for name in kind.model_fields}
    return sorted(name for name in environ if name.upper().startswith(ENV_PREFIX) and name.upper() not in known)
