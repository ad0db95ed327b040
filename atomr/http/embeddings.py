"""``POST /v1/embeddings``: OpenAI's embeddings endpoint over any deployment that embeds.

A body (`model`, `input`: a string or a list of strings, `encoding_format` "float" (the default)
or "base64", `dimensions`, `user`) becomes an `InferenceRequest` with task "embed", which takes
the shared inference flow (`atomr.http.chat.serve`: key, tenant and quota, gateway, rate limits,
deadline) and is answered whole, never streamed: ``{"object": "list", "data": [{"object":
"embedding", "index", "embedding"}], "model", "usage": {"prompt_tokens", "total_tokens"}}``, an
embedding being a list of numbers or, with base64, the base64 of its float32 little-endian bytes
(how atomr carries vectors, so they are sent as they came). Input as token arrays is refused
naming `input` (atomr's runtimes take text); a deployment that does not embed is refused naming
`model`, and `dimensions` or `user` naming the field where its runtime does not take them
(`atomr.core.runner.check_supported`). Errors are OpenAI's.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from atomr.core.errors import InternalError, InvalidRequestError
from atomr.core.types import InferenceRequest, InferenceResult
from atomr.http.bodies import decode_body
from atomr.http.chat import Dialect, StreamWriter, serve
from atomr.http.plumbing import FrontContext

EMBEDDINGS = "/v1/embeddings"


class EmbeddingsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]  # token arrays: read, to be refused by name
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


def parse(raw: bytes, default_max_tokens: int) -> tuple[EmbeddingsBody, InferenceRequest]:
    _, body = decode_body(raw, EmbeddingsBody)
    given = body.input
    texts = [given] if isinstance(given, str) else given
    if not all(isinstance(text, str) for text in texts):
        raise InvalidRequestError(
            "input as token arrays is not taken: send the text (a string or a list of strings)", field="input"
        )
    request = InferenceRequest(
        model=body.model,
        task="embed",
        inputs=tuple(str(text) for text in texts),
        dimensions=body.dimensions,
        user=body.user,
    )
    return body, request


def render(request: InferenceRequest, body: EmbeddingsBody, result: InferenceResult) -> dict[str, Any]:
    vectors: list[Any]
    if body.encoding_format == "base64":
        vectors = [base64.b64encode(v).decode("ascii") for v in result.embeddings]
    else:
        vectors = result.vectors()
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    usage = {"prompt_tokens": result.usage.prompt_tokens, "total_tokens": result.usage.total_tokens}
    return {"object": "list", "data": data, "model": body.model, "usage": usage}


def _no_stream(request: InferenceRequest, body: Any) -> StreamWriter:
    raise InternalError("embeddings are answered whole, never streamed")


EMBEDDINGS_DIALECT = Dialect(EMBEDDINGS, parse, render, _no_stream)


def routes(ctx: FrontContext) -> list[Route]:
    async def embeddings(request: Request) -> Response:
        return await serve(ctx, request, EMBEDDINGS_DIALECT)

    return [Route(EMBEDDINGS, embeddings, methods=["POST"])]
