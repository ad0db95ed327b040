"""The documented bodies of Anthropic's Messages wire on the HTTP front (``POST /v1/messages`` and
``/v1/messages/count_tokens``), as pydantic models for the OpenAPI document (`atomr.http.openapi`).

The same conventions as `atomr.http.schemas`. What the parser (`anthropic_messages`) takes beyond
these (``thinking`` and the API's other fields, other block types) goes to `anthropic` deployments
as sent and is refused by name elsewhere; the document shows ``thinking`` as the example of it.
Answers relayed from an `anthropic` deployment may hold more block types than those written
here, so content blocks are open objects with a ``type``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

_Stop = Annotated[str, Field(min_length=1)]
_ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---- requests ----


class TextBlock(_Open):
    type: Literal["text"]
    text: str


class _Base64Image(_Open):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class _UrlImage(_Open):
    type: Literal["url"]
    url: str = Field(pattern=r"^https?://")


class ImageBlock(_Open):
    type: Literal["image"]
    source: _Base64Image | _UrlImage


class ToolUseBlock(_Open):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


class ToolResultBlock(_Open):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlock] | SkipJsonSchema[None] = None
    is_error: bool | SkipJsonSchema[None] = None


class UserTurn(_Open):
    role: Literal["user"]
    content: str | Annotated[list[TextBlock | ImageBlock | ToolResultBlock], Field(min_length=1)]


class AssistantTurn(_Open):
    role: Literal["assistant"]
    content: str | Annotated[list[TextBlock | ToolUseBlock], Field(min_length=1)]


class MessagesTool(_Open):
    name: _ToolName
    description: str | SkipJsonSchema[None] = None
    input_schema: dict[str, Any] = Field(description="a JSON schema")


class _AutoChoice(_Open):
    type: Literal["auto", "any", "none"]
    disable_parallel_tool_use: bool | SkipJsonSchema[None] = None


class _NamedChoice(_Open):
    type: Literal["tool"]
    name: _ToolName
    disable_parallel_tool_use: bool | SkipJsonSchema[None] = None


class _Thinking(_Open):
    """extended thinking: anthropic deployments only (refused by name elsewhere)"""

    type: Literal["enabled", "disabled"]
    budget_tokens: Annotated[int, Field(ge=1024)] | SkipJsonSchema[None] = None


class _UserId(_Open):
    user_id: str | SkipJsonSchema[None] = None


class CountTokensRequest(_Open):
    model: str = Field(min_length=1, description="a deployment, alias, route or cascade name")
    messages: list[UserTurn | AssistantTurn] = Field(min_length=1)
    system: str | list[TextBlock] | SkipJsonSchema[None] = None
    tools: list[MessagesTool] | SkipJsonSchema[None] = Field(default=None, description="tool names unique")
    tool_choice: _AutoChoice | _NamedChoice | SkipJsonSchema[None] = Field(
        default=None, description="a named tool must be one of tools"
    )
    thinking: _Thinking | SkipJsonSchema[None] = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: Annotated[list[_Stop], Field(max_length=8)] | SkipJsonSchema[None] = None
    temperature: Annotated[float, Field(ge=0, le=1)] | SkipJsonSchema[None] = None
    top_p: Annotated[float, Field(gt=0, le=1)] | SkipJsonSchema[None] = None
    top_k: Annotated[int, Field(ge=0)] | SkipJsonSchema[None] = None
    metadata: _UserId | SkipJsonSchema[None] = None
    stream: bool = False


# ---- answers ----


class _Block(_Open):
    type: str


class MessagesUsage(_Open):
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)


_StopReason = Literal[
    "end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal", "model_context_window_exceeded"
]


class Message(_Open):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[_Block]
    stop_reason: (
        Literal[
            "end_turn",
            "max_tokens",
            "stop_sequence",
            "tool_use",
            "pause_turn",
            "refusal",
            "model_context_window_exceeded",
        ]
        | None
    )
    stop_sequence: str | None
    usage: MessagesUsage


class TokenCount(_Open):
    input_tokens: int = Field(ge=0)


class _ErrorDetail(BaseModel):
    type: str = Field(description="Anthropic's error type, e.g. invalid_request_error")
    message: str


class MessagesError(BaseModel):
    type: Literal["error"]
    error: _ErrorDetail


COMPONENTS: tuple[type[BaseModel], ...] = (MessagesRequest, CountTokensRequest, Message, TokenCount, MessagesError)
