"""What agents and extractors put in a job (schemas/CONTRACT.md, README.md "A job"):
messages with text and image parts, tool calls and their results, tool definitions, the tool choice and
the response format; and ``ToolCall``, the shape shared by an assistant message and ``output.tool_calls``.

Re-exported from ``schemas.models``. Every check here names the offending field or value, because the
reason of an ``invalid_job`` result is read by the person who wrote the job.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StringConstraints,
    Tag,
    model_validator,
)

TOOL_NAME_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"
MAX_TOOLS: Final = 128
MAX_TOOL_CALLS: Final = 128
MAX_IMAGE_BYTES: Final = 512 * 1024
"""Decoded size of one base64 image; the whole job is at most 1 MiB anyway."""
IMAGE_MEDIA_TYPES: Final = ("image/png", "image/jpeg", "image/gif", "image/webp")
DEFAULT_RESPONSE_NAME: Final = "response"

ToolName = Annotated[str, StringConstraints(pattern=TOOL_NAME_PATTERN)]
ToolCallId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
ImageMediaType = Literal["image/png", "image/jpeg", "image/gif", "image/webp"]
ToolChoiceMode = Literal["auto", "none", "required"]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _object_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema whose instances are objects: ``type: "object"``, with well-formed properties."""
    if schema.get("type") != "object":
        raise ValueError('must be a JSON Schema object with "type": "object"')
    properties = schema.get("properties", {})
    if not isinstance(properties, dict) or not all(isinstance(p, dict | bool) for p in properties.values()):
        raise ValueError('"properties" of the JSON Schema must map names to schemas')
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
        raise ValueError('"required" of the JSON Schema must be a list of property names')
    return schema


ObjectSchema = Annotated[dict[str, Any], AfterValidator(_object_schema)]


class TextPart(_Part):
    type: Literal["text"]
    text: str


class ImagePart(_Part):
    """An image, inline (``media_type`` + base64 ``data``) or by ``url`` (https; the worker never fetches it)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True,
        json_schema_extra={"oneOf": [{"required": ["media_type", "data"]}, {"required": ["url"]}]},
    )

    type: Literal["image"]
    media_type: ImageMediaType | None = None
    data: str | None = None
    url: Annotated[str, StringConstraints(min_length=9, max_length=2048)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ImagePart:
        if self.url is not None:
            if self.data is not None or self.media_type is not None:
                raise ValueError("an image has either a url or media_type and data, not both")
            if not self.url.startswith("https://"):
                raise ValueError("an image url must start with https://")
            return self
        if self.data is None or self.media_type is None:
            raise ValueError("an image needs media_type and base64 data, or a url")
        try:
            size = len(base64.b64decode(self.data, validate=True))
        except (binascii.Error, ValueError):
            raise ValueError("image data is not valid base64") from None
        if size > MAX_IMAGE_BYTES:
            raise ValueError(f"image is {size} bytes, over the cap of {MAX_IMAGE_BYTES} bytes")
        return self


def _content_kind(value: Any) -> str:
    return "text" if isinstance(value, str) else "parts"


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]
# A callable discriminator keeps a bad part's error to its own branch (a plain union also reports "not a string").
Content = Annotated[
    Annotated[str, Tag("text")] | Annotated[list[ContentPart], Tag("parts"), Field(min_length=1)],
    Discriminator(_content_kind),
]
TextContent = Annotated[
    Annotated[str, Tag("text")] | Annotated[list[TextPart], Tag("parts"), Field(min_length=1)],
    Discriminator(_content_kind),
]


class ToolCall(_Part):
    """A call the model made: in ``output.tool_calls``, and sent back as it is in an assistant message."""

    id: ToolCallId
    name: ToolName
    arguments: dict[str, Any]


class UserMessage(_Part):
    role: Literal["user"]
    content: Content


class AssistantMessage(_Part):
    role: Literal["assistant"]
    content: TextContent | None = None
    tool_calls: Annotated[list[ToolCall], Field(min_length=1, max_length=MAX_TOOL_CALLS)] | None = None

    @model_validator(mode="after")
    def _says_something(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class ToolMessage(_Part):
    """The result of the tool call ``tool_call_id``, made by an earlier assistant message."""

    role: Literal["tool"]
    tool_call_id: ToolCallId
    content: Content


ChatMessage = Annotated[UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


class Tool(_Part):
    name: ToolName
    description: str | None = None
    parameters: ObjectSchema = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolChoiceName(_Part):
    """Forces a call of the named tool."""

    name: ToolName


ToolChoice = ToolChoiceMode | ToolChoiceName


class JsonSchemaFormat(_Part):
    """JSON that matches ``schema`` (an object schema); the answer lands parsed in ``output.parsed``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: Literal["json_schema"]
    name: ToolName = DEFAULT_RESPONSE_NAME
    schema_: ObjectSchema = Field(alias="schema")
    strict: StrictBool | None = None


class JsonObjectFormat(_Part):
    """Any JSON object."""

    type: Literal["json_object"]


ResponseFormat = Annotated[JsonSchemaFormat | JsonObjectFormat, Field(discriminator="type")]


def check_tools(tools: Sequence[Tool] | None, tool_choice: ToolChoice | None) -> None:
    names = [tool.name for tool in tools or ()]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"input.tools: tool name {duplicates[0]!r} is defined more than once")
    if isinstance(tool_choice, ToolChoiceName) and tool_choice.name not in names:
        raise ValueError(f"input.tool_choice names {tool_choice.name!r}, which is not in input.tools")
    if tool_choice == "required" and not names:
        raise ValueError("input.tool_choice 'required' needs input.tools")


def check_tool_pairing(messages: Sequence[UserMessage | AssistantMessage | ToolMessage]) -> None:
    """Each tool message answers a call of the assistant message right before it (only tool messages in
    between), each call is answered once, before the conversation goes on: the order every protocol needs."""
    unanswered: dict[str, int] = {}
    seen: set[str] = set()
    for index, message in enumerate(messages):
        where = f"input.messages.{index}"
        if isinstance(message, ToolMessage):
            if message.tool_call_id not in unanswered:
                raise ValueError(
                    f"{where}: tool_call_id {message.tool_call_id!r} answers no open tool call of the "
                    "assistant message before it"
                )
            del unanswered[message.tool_call_id]
            continue
        if unanswered:
            raise ValueError(f"{where}: tool call {next(iter(unanswered))!r} has no tool message answering it")
        if isinstance(message, AssistantMessage):
            for call in message.tool_calls or ():
                if call.id in seen:
                    raise ValueError(f"{where}.tool_calls: tool call id {call.id!r} is used more than once")
                seen.add(call.id)
                unanswered[call.id] = index
    if unanswered:
        raise ValueError(f"the conversation ends with tool call {next(iter(unanswered))!r} unanswered")


def response_name(response_format: ResponseFormat) -> str:
    return response_format.name if isinstance(response_format, JsonSchemaFormat) else DEFAULT_RESPONSE_NAME


def check_response_tool(tools: Sequence[Tool] | None, response_format: ResponseFormat | None) -> None:
    """The response format's name must not shadow a tool (Anthropic carries structured output as a tool)."""
    if response_format is None:
        return
    name = response_name(response_format)
    if any(tool.name == name for tool in tools or ()):
        raise ValueError(f"input.response_format name {name!r} is also the name of a tool in input.tools")
