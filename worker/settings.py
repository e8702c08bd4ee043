"""Every setting of both processes, read from ``BYOK_*`` environment variables (DESIGN.md)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class VaultAuthMethod(StrEnum):
    TOKEN = "token"  # noqa: S105 - a method name, not a secret
    APPROLE = "approle"
    KUBERNETES = "kubernetes"


PROVIDER_MAX_RESPONSE_BYTES = 8 * 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BYOK_", extra="ignore")

    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    topology_prefix: str = Field(default="byok", pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    prefetch: int = Field(default=64, ge=1, le=65535)
    delivery_limit: int = Field(default=5, ge=1, description="quorum queue x-delivery-limit for byok.jobs")

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

    unseal_cache_ttl_s: float = Field(default=300.0, ge=0)
    unseal_cache_size: int = Field(default=10_000, ge=1)

    provider_connect_timeout_s: float = Field(default=10.0, gt=0)
    provider_read_timeout_s: float = Field(default=600.0, gt=0)
    provider_max_connections: int = Field(default=1000, ge=1)
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

    # What one provider endpoint may cost the worker (hardening, #13). The response cap stays well under
    # RabbitMQ 4's default max_message_size (16 MiB), so a result carrying the answer can still be published.
    provider_max_response_bytes: int = Field(
        default=PROVIDER_MAX_RESPONSE_BYTES, ge=1024, description="a provider's answer, decoded, is refused above this"
    )
    provider_call_timeout_s: float = Field(
        default=300.0, gt=0, description="one provider call, request to last byte (the job's deadline may cut it)"
    )

    reconnect_max_s: float = Field(
        default=60.0, gt=0, description="exit with status 1 when the broker stays unreachable this long"
    )
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    log_level: str = "info"
    log_format: str = Field(default="json", pattern=r"^(json|console)$")
    metrics_listen: str = "127.0.0.1:9464"

    store_url: SecretStr = SecretStr("sqlite:///./byok.db")  # a PostgreSQL URL may carry a password
    api_listen: str = "127.0.0.1:8088"
    prices_file: str | None = None

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


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` of a ``*_LISTEN`` setting (``[::1]:80`` too); an empty host is loopback."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def load_settings() -> Settings:
    return Settings()
