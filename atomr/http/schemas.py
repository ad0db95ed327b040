"""The documented bodies of the HTTP front, as pydantic models: what `atomr.http.openapi` builds
the OpenAPI document's schemas from.

The request models say what the server accepts (`openai_requests` parses, and
`InferenceRequest.validate` checks): every range, the message shapes per role, tools, tool
choices and response formats, and the limits on ``seed`` and ``stop``. Whether a deployment's
runtime honours a parameter is decided per request (a 400 naming it otherwise). The response
models say what `openai_wire` renders. tests/test_fuzz_http.py checks that bodies generated from the
document are accepted by the parser, and that the server's answers match the document.

Conventions, read by `openapi`: a class docstring becomes the schema's description (so these
classes carry docstrings only where the document has one); `X | SkipJsonSchema[None] = None` is
an optional field that is not nullable; the models listed in `COMPONENTS` are the document's
named schemas, every other model is written in place where it is used.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from atomr.core.types import MAX_EMBEDDING_INPUTS

INT64_MAX = 2**63 - 1
MAX_STOP = 8  # stop sequences (`SamplingParams.validate`)

_Stop = Annotated[str, Field(min_length=1)]


class _Open(BaseModel):
    """Bodies keep fields they do not name (an OpenAI client may send more)."""

    model_config = ConfigDict(extra="allow")


# ---- requests ----

_ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImageUrl(_Open):
    url: str = Field(pattern=r"^(https?://|data:image/)", description="an http(s) URL or a data:image/... URL")
    detail: Literal["auto", "low", "high"] | SkipJsonSchema[None] = None


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageUrl


class FunctionCall(_Open):
    name: str
    arguments: str = Field(description="the arguments as JSON text")


class ToolCall(_Open):
    id: str
    type: Literal["function"]
    function: FunctionCall


class SystemMessage(_Open):
    role: Literal["system", "developer"]
    content: str | list[TextPart]
    name: str | SkipJsonSchema[None] = None


class UserMessage(_Open):
    role: Literal["user"]
    content: str | list[TextPart | ImagePart]
    name: str | SkipJsonSchema[None] = None


class AssistantMessage(_Open):
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None
    name: str | SkipJsonSchema[None] = None
    tool_calls: list[ToolCall] | SkipJsonSchema[None] = Field(default=None, min_length=1)


class ToolMessage(_Open):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str = Field(min_length=1)


ChatMessage = SystemMessage | UserMessage | AssistantMessage | ToolMessage


class FunctionDefinition(_Open):
    name: _ToolName
    description: str | SkipJsonSchema[None] = None
    parameters: dict[str, Any] | SkipJsonSchema[None] = Field(default=None, description="a JSON schema")
    strict: bool | SkipJsonSchema[None] = None


class ToolDefinition(_Open):
    type: Literal["function"]
    function: FunctionDefinition


class _NamedFunction(_Open):
    name: _ToolName


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: _NamedFunction


class JsonSchemaFormat(_Open):
    name: str = Field(min_length=1)
    schema_: dict[str, Any] = Field(alias="schema", description="a JSON schema")
    strict: bool | SkipJsonSchema[None] = None


class ResponseFormat(_Open):
    """text, json_object, json_schema (with `json_schema`), or regex (with `pattern`: an atomr
    extension honoured by local engines)"""

    type: Literal["text", "json_object", "json_schema", "regex"]
    json_schema: JsonSchemaFormat | SkipJsonSchema[None] = None
    pattern: str | SkipJsonSchema[None] = Field(default=None, min_length=1)


class StreamOptions(_Open):
    include_usage: bool = False


class _Request(_Open):
    """Parameters of both requests. A parameter not sent is not set: OpenAI-wire runtimes forward
    the body as it came (fields not named here too); other runtimes refuse, naming it, a
    parameter they cannot honour."""

    model: str = Field(min_length=1, description="a deployment, alias, route or cascade name")
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, description="extension: 0 disables top-k")
    seed: int | None = Field(default=None, ge=0, le=INT64_MAX)
    stop: _Stop | Annotated[list[_Stop], Field(max_length=MAX_STOP)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None, description="token id -> bias"
    )


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20, description="needs logprobs: true")
    tools: list[ToolDefinition] | None = Field(default=None, description="function names unique")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        default=None, description="required or a named function need tools (naming one of them)"
    )
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    metadata: dict[str, str] | None = None


class CompletionRequest(_Request):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] = Field(description="one prompt per request")
    logprobs: int | None = Field(default=None, ge=0, le=5)


# ---- responses ----


class _PromptDetails(BaseModel):
    cached_tokens: int = Field(ge=0)


class _CompletionDetails(BaseModel):
    reasoning_tokens: int = Field(ge=0)


class Usage(BaseModel):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    prompt_tokens_details: _PromptDetails | SkipJsonSchema[None] = None
    completion_tokens_details: _CompletionDetails | SkipJsonSchema[None] = None


class _TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[Annotated[int, Field(ge=0, le=255)]]


class ChatTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[Annotated[int, Field(ge=0, le=255)]]
    top_logprobs: list[_TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, Any]]
    text_offset: list[Annotated[int, Field(ge=0)]]


class _AnsweredCall(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


class _AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: str | SkipJsonSchema[None] = None
    reasoning_content: str | SkipJsonSchema[None] = None
    tool_calls: list[_AnsweredCall] | SkipJsonSchema[None] = None


class _ChatChoice(BaseModel):
    index: int = Field(ge=0)
    message: _AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"]


class _CompletionChoice(BaseModel):
    index: int = Field(ge=0)
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str


class _Answer(BaseModel):
    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str | SkipJsonSchema[None] = None


class ChatCompletion(_Answer):
    object: Literal["chat.completion"]
    choices: list[_ChatChoice] = Field(min_length=1, description="one per n")
    usage: Usage | None


class Completion(_Answer):
    object: Literal["text_completion"]
    choices: list[_CompletionChoice] = Field(min_length=1, description="one per n")
    usage: Usage | None


class ServerSentEvent(BaseModel):
    """one event of a stream: a JSON chunk (or an error body), the last one '[DONE]'"""

    data: str
    event: str | SkipJsonSchema[None] = None


_EmbeddingInput = Annotated[str, Field(min_length=1)]


class EmbeddingRequest(BaseModel):
    """Embeddings of one text or several; all inputs of a request go to the engine (or the
    provider) in one call. Token arrays are not taken (400 naming input)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    input: _EmbeddingInput | Annotated[list[_EmbeddingInput], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    encoding_format: Literal["float", "base64"] | SkipJsonSchema[None] = Field(
        default=None, description="float (the default): lists of numbers; base64: float32 little-endian bytes"
    )
    dimensions: Annotated[int, Field(ge=1, le=INT64_MAX)] | SkipJsonSchema[None] = Field(
        default=None, description="shorter vectors, where the deployment's runtime makes them"
    )
    user: str | SkipJsonSchema[None] = None


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    deployments: dict[str, str]


class _ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="OpenAI's error type, e.g. invalid_request_error")
    param: str | None = Field(description="the parameter that was wrong")
    code: str | None = Field(description="atomr's error kind")


class Error(BaseModel):
    error: _ErrorDetail


# The document's named schemas, in its order.
COMPONENTS: tuple[type[BaseModel], ...] = (
    Error,
    TextPart,
    ImagePart,
    ToolCall,
    SystemMessage,
    UserMessage,
    AssistantMessage,
    ToolMessage,
    ToolDefinition,
    NamedToolChoice,
    ResponseFormat,
    StreamOptions,
    ChatCompletionRequest,
    CompletionRequest,
    Usage,
    ChatTokenLogprob,
    ChatLogprobs,
    CompletionLogprobs,
    ChatCompletion,
    Completion,
    ServerSentEvent,
    EmbeddingRequest,
    EmbeddingList,
    Model,
    ModelList,
    Health,
    Readiness,
)
