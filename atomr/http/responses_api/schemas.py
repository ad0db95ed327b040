"""The documented bodies of ``/v1/responses`` as pydantic models, for the OpenAPI document
(`atomr.http.openapi`), with the conventions of `atomr.http.schemas`.

Requests say what `protocol` accepts. Responses are open objects where the API's are: output
items and their parts carry a ``type`` and more fields than a client needs to read them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

_ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class _Closed(BaseModel):
    """Request objects take only the fields they name (others are refused by name)."""

    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---- requests ----


class _InputText(_Closed):
    type: Literal["input_text"]
    text: str


class _InputImage(_Closed):
    type: Literal["input_image"]
    image_url: str = Field(pattern=r"^(https?://|data:image/)")
    detail: Literal["auto", "low", "high"] | None = None


class _OutputText(_Closed):
    type: Literal["output_text"]
    text: str
    annotations: list[Any] | SkipJsonSchema[None] = None


class _UserItem(_Closed):
    type: Literal["message"] | SkipJsonSchema[None] = None
    role: Literal["user", "system", "developer"]
    content: str | list[_InputText | _InputImage]


class _AssistantItem(_Closed):
    type: Literal["message"] | SkipJsonSchema[None] = None
    role: Literal["assistant"]
    content: str | list[_InputText | _OutputText]


class _FunctionCallItem(_Closed):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: _ToolName
    arguments: str = Field(description="the arguments as JSON text")


class _FunctionCallOutputItem(_Closed):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str


class _FunctionTool(_Closed):
    type: Literal["function"]
    name: _ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = Field(default=None, description="a JSON schema")
    strict: bool | None = None


class _NamedFunction(_Closed):
    type: Literal["function"]
    name: _ToolName


class _PlainFormat(_Closed):
    type: Literal["text", "json_object"]


class _SchemaFormat(_Closed):
    type: Literal["json_schema"]
    name: str = Field(min_length=1)
    schema_: dict[str, Any] = Field(alias="schema", description="a JSON schema")
    strict: bool | None = None


class _TextOptions(_Closed):
    format: _PlainFormat | _SchemaFormat | SkipJsonSchema[None] = None


class _ReasoningOptions(_Closed):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None


_Item = _UserItem | _AssistantItem | _FunctionCallItem | _FunctionCallOutputItem


class ResponseRequest(_Closed):
    model: str = Field(min_length=1, description="a deployment, alias, route or cascade name")
    input: str | Annotated[list[_Item], Field(min_length=1)]
    instructions: str | None = None
    tools: list[_FunctionTool] | None = Field(default=None, description="function names unique")
    tool_choice: Literal["none", "auto", "required"] | _NamedFunction | None = Field(
        default=None, description="a forced choice needs tools; a named one must be one of them"
    )
    parallel_tool_calls: bool | None = None
    text: _TextOptions | SkipJsonSchema[None] = None
    reasoning: _ReasoningOptions | SkipJsonSchema[None] = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    metadata: dict[str, str] | None = None
    user: str | None = None
    stream: bool = False
    store: bool | None = Field(default=None, description="keep the answer (default true, when the store is on)")
    previous_response_id: str | None = Field(default=None, min_length=1, description="continue a stored answer")


# ---- answers ----


class _OutputItem(_Open):
    type: str
    id: str


class _ResponseUsage(_Open):
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class Response(_Open):
    id: str
    object: Literal["response"]
    created_at: float
    status: Literal["completed", "incomplete", "failed", "in_progress"]
    model: str
    output: list[_OutputItem]
    usage: _ResponseUsage | None


class DeletedResponse(_Open):
    id: str
    object: Literal["response"]
    deleted: Literal[True]


COMPONENTS: tuple[type[BaseModel], ...] = (ResponseRequest, Response, DeletedResponse)
