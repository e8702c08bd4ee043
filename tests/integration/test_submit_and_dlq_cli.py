"""`byok submit` and `byok dlq` as a user meets them: one line on a broker problem, whole ids, size caps."""

from __future__ import annotations

from pathlib import Path

import aio_pika
import orjson
import pytest

from schemas.models import MAX_JOB_BYTES, MAX_METADATA_BYTES
from tests.broker import byok, job_body
from tests.services import free_port
from worker.broker.names import HEADER_ERROR, HEADER_REASON, Topology
from worker.broker.topology import declare_topology, topology_spec
from worker.settings import Settings

OLLAMA = {"provider": "ollama", "name": "llama3"}


def one_line_error(stderr: bytes, settings: Settings) -> str:
    text = stderr.decode()
    assert "Traceback" not in text, text
    assert text.count("\n") == 1, text
    password = settings.amqp_url.get_secret_value().split("@", 1)[0]
    assert password not in text, "the AMQP URL's credentials are never shown"
    return text


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    path = tmp_path / "job.json"
    path.write_bytes(job_body("cli-1", "ws-cli", OLLAMA))
    return path


@pytest.mark.parametrize("verb", [["submit", "--file", "JOB"], ["dlq", "list"], ["dlq", "show", "some-id"]])
def test_broker_down_is_one_line(settings: Settings, job_file: Path, verb: list[str]) -> None:
    port = free_port()
    args = [str(job_file) if arg == "JOB" else arg for arg in verb]
    result = byok(settings, *args, check=False, extra_env={"BYOK_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{port}/"})
    assert result.returncode == 1
    text = one_line_error(result.stderr, settings)
    assert f"cannot connect to the broker at 127.0.0.1:{port}" in text and "BYOK_AMQP_URL" in text


@pytest.mark.parametrize(("verb", "missing"), [
    (["submit", "--file", "JOB"], "exchange {jobs}"),
    (["submit", "--file", "JOB", "--wait", "--timeout", "5"], "exchange {jobs}"),
    (["dlq", "list"], "queue {dead}"),
    (["dlq", "replay"], "queue {dead}"),
])
def test_missing_topology_is_one_line_that_says_how_to_declare_it(
    settings: Settings, job_file: Path, verb: list[str], missing: str
) -> None:
    names = Topology(settings.topology_prefix)  # a fresh prefix: nothing of it is declared on the broker
    args = [str(job_file) if arg == "JOB" else arg for arg in verb]
    result = byok(settings, *args, check=False)
    assert result.returncode == 1
    text = one_line_error(result.stderr, settings)
    kind, name = missing.format(jobs=names.jobs_exchange, dead=names.dead_letter_queue).split()
    assert f"has no {kind} '{name}'" in text, text
    assert "byok worker" in text and "BYOK_TOPOLOGY_PREFIX" in text


def test_submit_refuses_a_job_over_the_size_cap_before_publishing(settings: Settings, tmp_path: Path) -> None:
    # The topology is not declared: a publish would fail with exit 1, a refusal before it exits 2.
    big = tmp_path / "big.json"
    big.write_bytes(job_body("cli-big", "ws-cli", OLLAMA, content="x" * MAX_JOB_BYTES))
    result = byok(settings, "submit", "--file", str(big), check=False)
    assert (result.returncode, result.stdout) == (2, b"")
    assert f"at most {MAX_JOB_BYTES} bytes" in result.stderr.decode()

    metadata = tmp_path / "metadata.json"
    metadata.write_bytes(job_body("cli-meta", "ws-cli", OLLAMA, metadata={"blob": "x" * MAX_METADATA_BYTES}))
    result = byok(settings, "submit", "--file", str(metadata), check=False)
    assert (result.returncode, result.stdout) == (2, b"")
    assert f"metadata is larger than {MAX_METADATA_BYTES} bytes" in result.stderr.decode()


async def test_dlq_list_prints_message_ids_whole_for_dlq_show(settings: Settings) -> None:
    names = Topology(settings.topology_prefix)
    long_id = "ticket-" + "0123456789" * 12  # job ids may be 128 characters long
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await declare_topology(channel, topology_spec(names, delivery_limit=settings.delivery_limit))
        dlx = await channel.get_exchange(names.dead_letter_exchange)
        await dlx.publish(aio_pika.Message(
            job_body(long_id, "ws-cli", OLLAMA), message_id=long_id,
            headers={HEADER_ERROR: "provider_error", HEADER_REASON: "the provider answered 500"},
        ), routing_key="")

    table = byok(settings, "dlq", "list").stdout.decode().splitlines()
    assert table[0].split() == ["message_id", "workspace", "error", "reason"]
    assert table[1].split()[:3] == [long_id, "ws-cli", "provider_error"], table
    assert table[1].endswith("the provider answered 500")

    pasted = table[1].split()[0]
    shown = orjson.loads(byok(settings, "dlq", "show", pasted).stdout)
    assert shown["job_id"] == long_id
