"""How the simulator behaves for one request: the ``x-sim-behavior`` header (wins) or a ``sim-<behaviour>`` model."""

from __future__ import annotations

from dataclasses import dataclass

BEHAVIOR_HEADER = "x-sim-behavior"
MODEL_PREFIX = "sim-"

_SIMPLE_BEHAVIOURS = frozenset(
    {"ok", "auth", "rate", "quota", "overloaded", "error", "cached", "reasoning", "cached-reasoning", "nousage"}
)
CACHED = frozenset({"cached", "cached-reasoning"})
REASONING = frozenset({"reasoning", "cached-reasoning"})
_NUMBERED_BEHAVIOURS = ("slow", "flaky")


@dataclass(frozen=True, slots=True)
class Behavior:
    kind: str
    arg: int = 0

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.arg}" if self.kind in _NUMBERED_BEHAVIOURS else self.kind


OK = Behavior("ok")


def parse_behavior(value: str | None) -> Behavior | None:
    """``auth``, ``sim-auth``, ``slow-1500``, ``sim-flaky-2``… or None when it names no behaviour."""
    if not value:
        return None
    name = value.strip().lower().removeprefix(MODEL_PREFIX)
    if name in _SIMPLE_BEHAVIOURS:
        return Behavior(name)
    for kind in _NUMBERED_BEHAVIOURS:
        number = name.removeprefix(f"{kind}-")
        if number != name and number.isdigit():
            return Behavior(kind, int(number))
    return None


def select_behavior(header: str | None, model: str) -> Behavior:
    from_header = parse_behavior(header)
    if from_header is not None:
        return from_header
    if model.lower().startswith(MODEL_PREFIX):
        return parse_behavior(model) or OK
    return OK
