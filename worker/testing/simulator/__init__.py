"""A local provider simulator: one aiohttp server that speaks OpenAI, Mistral, Anthropic and Ollama.

It is the test double for real providers, the demo target and the benchmark target. Answers are
deterministic so a test can predict them (``answers.py``):

- reply text: ``"sim: " + <content of the last user message, first 40 characters>``
  (cut to ``max_tokens`` words, ``finish_reason`` length, when the request asks for fewer);
- tool calls: when the request offers tools, the answer calls every offered tool whose name the last user
  message mentions (case-insensitive), or the one a tool choice forces (``required``/``any``: the first tool
  when none is mentioned, the last one after tool results; a name: that tool), with the minimal arguments
  valid for the tool's ``parameters`` (``schema_values.py``); ``tool_choice`` ``none`` never calls. Ids:
  OpenAI ``call_…``, Anthropic ``toolu_…``, Mistral nine alphanumerics, Ollama none. A call forced by name
  finishes ``stop`` on OpenAI (as OpenAI does), ``tool_calls``/``tool_use`` elsewhere; Ollama says ``stop``
  whatever it called;
- after tool results (the conversation ends with them and no tool is forced): ``"sim: <tool> said
  <result, first 200 characters>"`` for each result, joined with ``"; "``;
- structured output (OpenAI/Mistral ``response_format``, Anthropic ``output_config.format``, Ollama ``format``):
  the minimal value valid for the schema as a JSON text, or ``{"answer": <reply text>}`` for ``json_object``
  and ``format: "json"``; a forced Anthropic tool gets the same minimal arguments;
- prompt tokens ``P``: whitespace-separated words of the system prompt, every message text, every tool
  result and every earlier tool call (``name`` + arguments as JSON text), plus for each offered tool the words
  of its name and description and one token per 4 bytes of its ``parameters`` (sorted-key compact JSON),
  plus for each image 85 tokens and one per 100 decoded bytes (an image by URL: 85; never fetched); at least 1;
- output tokens ``O``: words of the reply, plus the words of each tool call (``name`` + arguments JSON text).

Behaviour per request, from the header ``x-sim-behavior`` (wins) or a model name ``sim-<behaviour>``:
``ok`` (default), ``auth``, ``rate``, ``quota``, ``overloaded``, ``error``, ``slow-<ms>``, ``cached``,
``reasoning``, ``cached-reasoning``, ``nousage``, ``flaky-<n>`` (``behavior.py``). With ``cached``,
``P // 2`` prompt tokens are cache reads (and for Anthropic ``P // 4`` more are cache writes); with
``reasoning`` (OpenAI only) ``REASONING_TOKENS`` reasoning tokens are added inside ``completion_tokens``;
``cached-reasoning`` does both in one answer (Ollama ignores all three).

Prompt caching is modelled as the providers do it (``prompt_cache.py``): a cache per key, model and prefix
with a TTL (``cache_ttl_s``, 5 minutes, renewed by each use); Anthropic caches the tools and system blocks up
to a ``cache_control`` marker once they reach 1024 tokens (2048 for Haiku models), billing a first call as
cache writes and later ones as cache reads; OpenAI caches tools and leading system messages of 1024 tokens
or more by itself (per ``prompt_cache_key``), billing later calls' cached part as ``cached_tokens``; Mistral
and Ollama cache nothing. The ledger's billed usage carries these reads and writes.

Every request on a protocol route lands in the ``Ledger`` (``GET /_sim/ledger``, ``POST /_sim/reset``) as a
call, with a fingerprint of the key it carried, never the key; a served call also records its text, its tool
calls and how its input was counted (``input_shape``: tools, tool tokens, images, image tokens). Answers that
carried usage are billed, whether or not the caller was still connected to receive them (recorded with status
499 then, as real providers bill a generation whose client went away); error answers are not. Every HTTP
request the server receives, on any path (protocol routes, the ``/_sim`` control routes, and paths it does
not serve at all), is also recorded in ``Ledger.requests()``: its method, path (never the query string) and
whether it carried a credential header (never its value); ``Ledger.arrived()`` counts those on the protocol
routes, answered or still running.
"""

from worker.testing.simulator.answers import (
    IMAGE_BASE_TOKENS,
    IMAGE_BYTES_PER_TOKEN,
    REASONING_TOKENS,
    REPLY_CHARS,
    REPLY_PREFIX,
    Answer,
    answer,
    image_tokens,
    tool_tokens,
    tools_to_call,
    words,
)
from worker.testing.simulator.behavior import (
    BEHAVIOR_HEADER,
    MODEL_PREFIX,
    OK,
    Behavior,
    parse_behavior,
    select_behavior,
)
from worker.testing.simulator.errors import RETRY_AFTER_S, error_payload
from worker.testing.simulator.ledger import (
    AUTH_HEADERS,
    InputShape,
    Ledger,
    LedgerCall,
    SeenRequest,
    ServedToolCall,
    key_fingerprint,
)
from worker.testing.simulator.requests import BadRequest, OfferedTool, OutputFormat, Prompt, ToolResult, read_prompt
from worker.testing.simulator.schema_values import minimal_value
from worker.testing.simulator.server import (
    CLIENT_GONE,
    LEDGER_PATH,
    PATHS,
    RESET_PATH,
    ProviderSimulator,
    serve_forever,
)

__all__ = [
    "AUTH_HEADERS",
    "BEHAVIOR_HEADER",
    "CLIENT_GONE",
    "IMAGE_BASE_TOKENS",
    "IMAGE_BYTES_PER_TOKEN",
    "LEDGER_PATH",
    "MODEL_PREFIX",
    "OK",
    "PATHS",
    "REASONING_TOKENS",
    "REPLY_CHARS",
    "REPLY_PREFIX",
    "RESET_PATH",
    "RETRY_AFTER_S",
    "Answer",
    "BadRequest",
    "Behavior",
    "InputShape",
    "Ledger",
    "LedgerCall",
    "OfferedTool",
    "OutputFormat",
    "Prompt",
    "ProviderSimulator",
    "SeenRequest",
    "ServedToolCall",
    "ToolResult",
    "answer",
    "error_payload",
    "image_tokens",
    "key_fingerprint",
    "minimal_value",
    "parse_behavior",
    "read_prompt",
    "select_behavior",
    "serve_forever",
    "tool_tokens",
    "tools_to_call",
    "words",
]
