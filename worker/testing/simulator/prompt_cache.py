"""The simulator's model of provider prompt caching, so a test measures what caching saved.

A cache entry is one provider key (its fingerprint), model and prefix (a digest of its content), alive for
``ttl_s`` after its last use. The prefix is the stable part of a request, counted in the simulator's own
tokens (words of the system prompt, each tool's tokens):

- Anthropic caches only up to a ``cache_control`` marker on a tool or a system block, and only a prefix of
  at least 1024 tokens (2048 for Haiku models). A miss writes the prefix (``cache_creation_input_tokens``), a
  hit reads it (``cache_read_input_tokens``); neither is in ``input_tokens``.
- OpenAI caches by itself every prefix of at least 1024 tokens (tools and leading system messages), keyed
  further by ``prompt_cache_key``; a hit reads the first 1024 tokens plus whole 128-token increments
  (``prompt_tokens_details.cached_tokens``, inside ``prompt_tokens``); writes are not reported or billed.
- Mistral and Ollama: nothing is cached.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Final

from schemas.models import Provider
from worker.testing.simulator.answers import tool_tokens, words
from worker.testing.simulator.requests import Prompt

DEFAULT_TTL_S: Final = 300.0
MIN_TOKENS: Final = 1024
HAIKU_MIN_TOKENS: Final = 2048
OPENAI_INCREMENT: Final = 128


@dataclass(frozen=True, slots=True)
class CachePrefix:
    """The cacheable prefix a request carries: what identifies it, and its size in the simulator's tokens."""

    digest: str
    tokens: int
    scope: str = ""
    """OpenAI's ``prompt_cache_key`` (routing), part of the entry's identity."""


@dataclass(frozen=True, slots=True)
class CacheUse:
    read: int = 0
    write: int = 0


NO_USE: Final = CacheUse()


def prefix_digest(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def min_tokens(protocol: Provider, model: str) -> int:
    return HAIKU_MIN_TOKENS if protocol is Provider.ANTHROPIC and "haiku" in model.lower() else MIN_TOKENS


@dataclass(slots=True)
class PromptCache:
    ttl_s: float = DEFAULT_TTL_S
    _expires: dict[tuple[str | None, str, str, str], float] = field(default_factory=dict)

    def use(self, protocol: Provider, key: str | None, model: str, prefix: CachePrefix | None, now: float) -> CacheUse:
        """Reads or writes the prefix's entry; what the call bills as cache reads and writes."""
        if prefix is None or protocol not in (Provider.ANTHROPIC, Provider.OPENAI):
            return NO_USE
        if prefix.tokens < min_tokens(protocol, model):
            return NO_USE
        entry = (key, model, prefix.scope, prefix.digest)
        hit = self._expires.get(entry, 0.0) > now
        self._expires[entry] = now + self.ttl_s
        if protocol is Provider.OPENAI:
            cached = MIN_TOKENS + (prefix.tokens - MIN_TOKENS) // OPENAI_INCREMENT * OPENAI_INCREMENT
            return CacheUse(read=cached) if hit else NO_USE
        return CacheUse(read=prefix.tokens) if hit else CacheUse(write=prefix.tokens)

    def clear(self) -> None:
        self._expires.clear()


def _marked(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("cache_control"), dict)


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)]
    return []


def anthropic_prefix(body: dict[str, Any], prompt: Prompt) -> CachePrefix | None:
    """Tools then system blocks, up to the last ``cache_control`` marker among them; None without one."""
    tools = [tool for tool in body.get("tools") or [] if isinstance(tool, dict)]
    system = body.get("system")
    blocks = [block for block in system if isinstance(block, dict)] if isinstance(system, list) else []
    marked_blocks = [index for index, block in enumerate(blocks) if _marked(block)]
    marked_tools = [index for index, tool in enumerate(tools) if _marked(tool)]
    if marked_blocks:
        tool_count, prefix_blocks = len(tools), blocks[: marked_blocks[-1] + 1]
    elif marked_tools:
        tool_count, prefix_blocks = marked_tools[-1] + 1, []
    else:
        return None
    custom = sum(1 for tool in tools[:tool_count] if "input_schema" in tool)
    offered = prompt.tools[:custom]
    texts = [text for block in prefix_blocks for text in _texts([block])]
    tokens = sum(tool_tokens(tool) for tool in offered) + sum(words(text) for text in texts)
    parts = [[tool.name, tool.description, tool.parameters] for tool in offered], texts
    return CachePrefix(digest=prefix_digest(parts), tokens=tokens)


def openai_prefix(body: dict[str, Any], prompt: Prompt) -> CachePrefix | None:
    """Tools and the leading system (or developer) messages; None when there are neither."""
    texts: list[str] = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer"):
            break
        texts.extend(_texts(message.get("content")))
    if not texts and not prompt.tools:
        return None
    tokens = sum(tool_tokens(tool) for tool in prompt.tools) + sum(words(text) for text in texts)
    parts = [[tool.name, tool.description, tool.parameters] for tool in prompt.tools], texts
    scope = body.get("prompt_cache_key")
    return CachePrefix(digest=prefix_digest(parts), tokens=tokens, scope=scope if isinstance(scope, str) else "")


def request_prefix(protocol: Provider, body: dict[str, Any], prompt: Prompt) -> CachePrefix | None:
    if protocol is Provider.ANTHROPIC:
        return anthropic_prefix(body, prompt)
    if protocol is Provider.OPENAI:
        return openai_prefix(body, prompt)
    return None
