"""What wraps one provider call: budget reservations, call-started records and trace spans plug in here.

Each hook is entered, in the order given, just before the request is sent and left once the provider has
answered or the call failed; ``ProviderCall.reply`` is set before the hooks are left when the call
succeeded. A hook refuses a call by raising (a ``JobFailure``, or a signal the pipeline knows), and any
exception from the call passes through every hook on its way out, so a hook releases what it holds on every
path.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from schemas.models import CompletionJob
from worker.keys.endpoint import Endpoint
from worker.providers.base import ProviderReply


@dataclass(slots=True)
class ProviderCall:
    """One attempt at the provider. ``call_id`` is also the usage event's ``event_id`` when the call succeeds,
    so every record of the call (reservation, call-started record, usage event, span) shares one id."""

    job: CompletionJob
    call_id: str
    endpoint: Endpoint
    reply: ProviderReply | None = None


CallHook = Callable[[ProviderCall], AbstractAsyncContextManager[None]]

__all__ = ["CallHook", "ProviderCall"]
