"""Automatic prompt caching (the job's ``input.cache``, default ``auto``).

The stable prefix of a request is what repeats from call to call of an automation: the tools, then the
system prompt (the order Anthropic and OpenAI read a prompt in). With ``auto``:

- Anthropic caches only what a ``cache_control`` marker ends, and only once the prefix reaches the model's
  minimum cacheable length (1024 tokens; 2048 for Haiku models). The worker has no tokenizer: it estimates
  one token per ``CHARS_PER_TOKEN`` characters, which errs toward marking (English prose is about 4
  characters a token, code and most other scripts fewer), and a marker on a prefix the provider finds too
  short costs nothing: it is ignored.
- OpenAI caches long prefixes by itself; a ``prompt_cache_key`` of workspace + automation keeps one
  automation's calls on the same cache shards.
- Mistral and Ollama have no such field: nothing is added.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from schemas.models import CompletionJob, Provider

CHARS_PER_TOKEN: Final = 4
ANTHROPIC_MIN_TOKENS: Final = 1024
ANTHROPIC_HAIKU_MIN_TOKENS: Final = 2048
EPHEMERAL: Final = {"type": "ephemeral"}
MAX_CACHE_KEY: Final = 64
"""OpenAI's published limit on ``prompt_cache_key``; a longer workspace + automation pair is hashed."""


def caching(job: CompletionJob) -> bool:
    return job.input.cache != "off"  # absent means auto


def estimated_tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)


def anthropic_min_tokens(model: str) -> int:
    return ANTHROPIC_HAIKU_MIN_TOKENS if "haiku" in model.lower() else ANTHROPIC_MIN_TOKENS


OPENAI_MIN_TOKENS: Final = 1024


def min_cacheable_tokens(provider: Provider, model: str) -> int | None:
    """The shortest prefix the provider caches, in its tokens; None where the protocol caches nothing."""
    if provider is Provider.ANTHROPIC:
        return anthropic_min_tokens(model)
    if provider is Provider.OPENAI:
        return OPENAI_MIN_TOKENS
    return None


def _prefix_chars(body: dict[str, Any]) -> int:
    tools = body.get("tools") or []
    tool_chars = sum(len(str(tool.get("name", ""))) + len(str(tool.get("description", "")))
                     + len(str(tool.get("input_schema", ""))) for tool in tools)
    system = body.get("system")
    return tool_chars + (len(system) if isinstance(system, str) else 0)


def mark_anthropic_prefix(job: CompletionJob, body: dict[str, Any]) -> None:
    """Puts ``cache_control`` on the last block of the stable prefix (the system prompt, else the last tool)
    of an Anthropic request body, when the job caches and the prefix is long enough."""
    if not caching(job) or estimated_tokens(_prefix_chars(body)) < anthropic_min_tokens(job.model.name):
        return
    system = body.get("system")
    if isinstance(system, str) and system:
        body["system"] = [{"type": "text", "text": system, "cache_control": dict(EPHEMERAL)}]
    elif body.get("tools"):
        body["tools"][-1] = {**body["tools"][-1], "cache_control": dict(EPHEMERAL)}


def openai_cache_key(job: CompletionJob) -> dict[str, Any]:
    """``prompt_cache_key``: workspace + automation, so one automation's repeated prefix lands on one cache."""
    if not caching(job):
        return {}
    key = f"{job.workspace_id}/{job.automation_id or '_'}"
    if len(key) > MAX_CACHE_KEY:
        key = "byok-" + hashlib.sha256(key.encode()).hexdigest()[:32]
    return {"prompt_cache_key": key}


__all__ = [
    "anthropic_min_tokens", "estimated_tokens", "mark_anthropic_prefix", "min_cacheable_tokens", "openai_cache_key",
]
