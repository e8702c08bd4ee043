import asyncio

import pytest

from worker import event_loop
from worker.settings import Settings


async def _loop_type() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


def test_worker_runs_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BYOK_EVENT_LOOP", raising=False)
    chosen = Settings().event_loop
    assert chosen == "uvloop"
    assert event_loop.run(_loop_type(), chosen).__module__.startswith("uvloop")


def test_standard_loop_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOK_EVENT_LOOP", "asyncio")
    chosen = Settings().event_loop
    assert not event_loop.run(_loop_type(), chosen).__module__.startswith("uvloop")


def test_unknown_loop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOK_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="event_loop"):
        Settings()
