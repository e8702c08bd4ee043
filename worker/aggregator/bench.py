"""Ingest throughput of the consumption store (events per second), for ``make bench``.

``python -m worker.aggregator.bench sqlite:////tmp/bench.db 50000`` or with a ``postgresql://`` URL.
On PostgreSQL the run happens in a throwaway schema, dropped afterwards; a SQLite file is used as given.
Targets: 5,000 events/s into SQLite, 3,000 events/s into PostgreSQL.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg

from schemas.models import Provider, Status, UsageEvent
from worker.aggregator.db import Backend, parse_store_url
from worker.aggregator.store import Store

BATCH = 500
_MODELS = ((Provider.OPENAI, "gpt-4o-mini"), (Provider.ANTHROPIC, "claude-3-5-haiku-latest"),
           (Provider.MISTRAL, "mistral-small-latest"), (Provider.OPENAI, "gpt-4.1"))


def synthetic_events(n: int, *, run_id: str, start: datetime | None = None) -> list[UsageEvent]:
    """``n`` distinct events over 20 workspaces, 5 automations, 4 models and a few hours."""
    start = start or datetime(2025, 6, 1, tzinfo=UTC)
    events = []
    for i in range(n):
        provider, model = _MODELS[i % len(_MODELS)]
        events.append(UsageEvent(
            event_id=f"{run_id}-{i}", job_id=f"{run_id}-job-{i}", workspace_id=f"ws{i % 20}",
            automation_id=f"auto{i % 5}", tags={"run": run_id}, provider=provider, model=model,
            occurred_at=start + timedelta(seconds=i % 14_400), latency_ms=120.0, status=Status.SUCCEEDED,
            input_tokens=200 + i % 50, cache_read_tokens=i % 3 * 10, output_tokens=50 + i % 20,
            reasoning_tokens=i % 2 * 8, raw_usage={"prompt_tokens": 200, "completion_tokens": 50},
        ))
    return events


@contextmanager
def _isolated(store_url: str) -> Iterator[str]:
    """On PostgreSQL, a fresh schema (dropped at the end) via ``options=-csearch_path=…``."""
    if parse_store_url(store_url).backend is not Backend.POSTGRESQL:
        yield store_url
        return
    schema = f"byok_bench_{secrets.token_hex(4)}"
    with psycopg.connect(store_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    parts = urlsplit(store_url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"] + [("options", f"-csearch_path={schema}")]
    try:
        yield urlunsplit(parts._replace(query=urlencode(query)))
    finally:
        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def bench_ingest(store_url: str, n: int) -> float:
    """Ingests ``n`` new events in batches of 500 and returns events per second (ingest time only)."""
    with _isolated(store_url) as url:
        store = await Store.open(url)
        try:
            events = synthetic_events(n, run_id=secrets.token_hex(4))
            started = time.perf_counter()
            for offset in range(0, n, BATCH):
                await store.ingest(events[offset:offset + BATCH])
            elapsed = time.perf_counter() - started
        finally:
            await store.close()
    return n / elapsed if elapsed > 0 else float("inf")


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: python -m worker.aggregator.bench STORE_URL [EVENTS]", file=sys.stderr)
        return 2
    n = int(argv[1]) if len(argv) == 2 else 20_000
    rate = asyncio.run(bench_ingest(argv[0], n))
    print(f"{parse_store_url(argv[0]).backend.value}: {n} events ingested at {rate:,.0f} events/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
