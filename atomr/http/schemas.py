"""The documented bodies of the HTTP front, as pydantic models: what `atomr.http.openapi` builds
the OpenAPI document's schemas from.

The request models say exactly what the server accepts (`openai_wire` parses, and
`InferenceRequest.validate` checks): every range, the parameters taken only at their neutral value
(``n`` 1, no tools, no penalties...), and the limits on ``seed`` and ``stop``. The response models
say what `openai_wire` renders. tests/test_fuzz_http.py checks that bodies generated from the
document are accepted by the parser, and that the server's answers match the document.

Conventions, read by `openapi`: a class docstring becomes the schema's description (so these
classes carry docstrings only where the document has one); `X | SkipJsonSchema[None] = None` is
an optional field that is not nullable; the models listed in `COMPONENTS` are the document's
named schemas, every other model is written in place where it is used.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

INT64_MAX = 2**63 - 1
MAX_STOP = 8  # stop sequences (`SamplingParams.validate`)

# Parameters accepted only at their neutral value: anything else is a 400 naming the parameter.
_Zero = Annotated[float, WithJsonSchema({"type": "number", "enum": [0]})]
_Nothing = Annotated[dict[str, Any], Field(max_length=0)]
_NoList = Annotated[list[Any], Field(max_length=0)]
_Stop = Annotated[str, Field(min_length=1)]


class _Open(BaseModel):
    """Bodies keep fields they do not name (an OpenAI client may send more)."""

    model_config = ConfigDict(extra="allow")


# ---- requests ----


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | SkipJsonSchema[None] = None


class StreamOptions(_Open):
    include_usage: bool = False


class _ResponseFormat(_Open):
    type: Literal["text"] | SkipJsonSchema[None] = None


class _Request(_Open):
    """Parameters of both requests (`openai_wire._Common`)."""

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
    n: Literal[1] | None = None
    presence_penalty: _Zero | None = None
    frequency_penalty: _Zero | None = None
    logit_bias: _Nothing | None = None
    tools: _NoList | None = None
    functions: _NoList | None = None
    tool_choice: _Nothing | None = None
    function_call: _Nothing | None = None


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: _ResponseFormat | None = None


class CompletionRequest(_Request):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] = Field(description="one prompt per request")
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: Literal[False] | SkipJsonSchema[None] = None
    suffix: None = None  # null only
    best_of: Literal[1] | None = None


# ---- responses ----


class Usage(BaseModel):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class ChatTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[Annotated[int, Field(ge=0, le=255)]]
    top_logprobs: list[Any]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, Any]]
    text_offset: list[Annotated[int, Field(ge=0)]]


class _AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class _ChatChoice(BaseModel):
    index: Literal[0]
    message: _AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: str


class _CompletionChoice(BaseModel):
    index: Literal[0]
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
    choices: list[_ChatChoice] = Field(min_length=1, max_length=1)
    usage: Usage | None


class Completion(_Answer):
    object: Literal["text_completion"]
    choices: list[_CompletionChoice] = Field(min_length=1, max_length=1)
    usage: Usage | None


class ServerSentEvent(BaseModel):
    """one event of a stream: a JSON chunk (or an error body), the last one '[DONE]'"""

    data: str
    event: str | SkipJsonSchema[None] = None


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
    ChatMessage,
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
    Model,
    ModelList,
    Health,
    Readiness,
)
