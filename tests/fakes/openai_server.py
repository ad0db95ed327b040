"""A fake OpenAI API on 127.0.0.1 speaking the real wire format, for the `openai` and `litellm` runners.

Routes: `POST /v1/chat/completions` (a `chat.completion` object, or with `"stream": true` SSE
`data: {chat.completion.chunk}` events: a role delta, one content delta per token, a chunk with
the finish_reason, a usage chunk when `stream_options.include_usage`, then `data: [DONE]`),
`POST /v1/completions` (the same for `text_completion`), `POST /v1/embeddings` and `GET /v1/models`.

The "model" answers `reply_text` whatever it is asked. Tokens are words with their leading
whitespace ("Hello", " from", " the", ...), so a stream has one delta per word; prompt tokens
are the words of the prompt (or of every message). `max_tokens` / `max_completion_tokens` cut
the answer after that many tokens (finish_reason "length"); `stop` cuts it before the first stop
string (finish_reason "stop"). Logprobs come when asked (chat `logprobs: true` with optional
`top_logprobs`; completion `logprobs: N`), deterministic per token.

Checks made like the real API: the bearer key (when `api_key` is set; the 401 message echoes the
key received, which lets tests check that atomr never repeats it), known models, messages, at
most 4 stop strings, max_tokens >= 1, the prompt within `context_window` tokens (400
`context_length_exceeded`). Error bodies are `{"error": {"message", "type", "param", "code"}}`.

Agent features as the real API serves them: `n` choices (choice k > 0 answers "Choice k: " and
the reply); `tools`: a call is made when `tool_choice` is "required" or names a function, or, with
"auto" (or none given), when the last message is the user's and mentions "weather" or "time"
(both: two calls in parallel, unless `parallel_tool_calls` is false); the arguments are an
instance of the function's parameter schema (`example_of`), streamed as OpenAI does (a delta
with id, type and name, then argument pieces of 7 characters); finish_reason "tool_calls". A
conversation that ends with a tool result is answered "The tool said: <result>". A tool message
that answers no earlier call is refused (400) as the real API does. `response_format`
json_object / json_schema: the answer is a JSON object (an instance of the schema).
`reasoning_effort`: the answer streams `reasoning_content` first and usage counts reasoning
tokens. Usage has its details (cached_tokens 0).

Embeddings as the real API serves them, for the models in `embedding_models` (not listed by
`/v1/models`): `input` a string or a list of at most 2048 non-empty strings; each vector is
derived from its text alone (a hash of it, `embedding_of`), `EMBEDDING_DIMENSIONS` numbers of
unit length, float32; `dimensions` keeps the first N, scaled back to unit length (more than the
model has is a 400); `encoding_format` "float" (the default: JSON numbers, the float32 values) or
"base64" (base64 of the float32 little-endian bytes); usage counts the inputs' tokens.
`count("/v1/embeddings")` tells how many calls reached it.

Extra knobs besides `FakeProvider`'s: `finish_override` (the finish_reason to report instead,
e.g. "content_filter" or "tool_calls"), `bad_event_next()` (the next stream carries an event
whose data is not JSON), `omit_usage` (never send the usage chunk), `ignore_stream` (answer one
JSON object even when a stream was asked for, as some compatible servers do). `served` lists what every
successful call answered (text, finish_reason, usage), for tests to compare with. `reset()`
makes a long-lived fake (a module fixture) fresh again between tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tests.fakes.server import FakeProvider, Reply

_TOKEN = re.compile(r"\s*\S+|\s+$")
EMBEDDING_DIMENSIONS = 64
DEFAULT_REPLY = "Hello from the fake provider, one word at a time, as a real stream would."

ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout", None),
    409: ("conflict", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", "overloaded"),
    504: ("server_error", None),
    529: ("overloaded_error", None),
}


def tokenize(text: str) -> list[str]:
    """The fake's tokens: words with their leading whitespace (trailing whitespace is one more)."""
    return _TOKEN.findall(text)


def embedding_of(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """The fake's vector of `text` (float32 values, unit length), its first `dimensions` numbers
    scaled back to unit length as OpenAI shortens vectors."""
    digest = b"".join(hashlib.sha256(f"{k}:{text}".encode()).digest() for k in range(EMBEDDING_DIMENSIONS // 8))
    full = [(b - 127.5) / 127.5 for b in digest[:EMBEDDING_DIMENSIONS]]
    head = full[:dimensions]
    norm = math.sqrt(sum(v * v for v in head))
    return list(struct.unpack(f"<{len(head)}f", struct.pack(f"<{len(head)}f", *(v / norm for v in head))))


def token_logprob(index: int, token: str) -> float:
    """A deterministic, plausible logprob for the token at `index`."""
    return -round(0.05 + 0.01 * (index % 7) + 0.001 * len(token), 6)


@dataclass
class Served:
    path: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    stream: bool


class FakeOpenAI(FakeProvider):
    def __init__(self, api_key: str | None = None, models: tuple[str, ...] = ("gpt-fake", "gpt-fake-instruct")) -> None:
        super().__init__()
        self.models = models
        self.embedding_models = ("text-embedding-3-fake",)
        self.served: list[Served] = []
        self.reset(api_key)

    def reset(self, api_key: str | None = None) -> None:
        """Back to a fresh fake (knobs, faults, calls, served), expecting `api_key` from now on."""
        with self.lock:
            self.api_key = api_key
            self.reply_text = DEFAULT_REPLY
            self.context_window = 4096
            self.finish_override: str | None = None
            self.omit_usage = False
            self.ignore_stream = False
            self._bad_events = 0
            self.served.clear()
        self.forget_calls()

    # knobs
    def bad_event_next(self) -> None:
        with self.lock:
            self._bad_events += 1

    def error_body(self, status: int) -> Any:
        kind, code = ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
        return _error(f"fake error {status}", kind, code=code)

    # the API
    def handle(self, path: str, headers: dict[str, str], body: Any) -> Reply:
        route = urlsplit(path).path.rstrip("/")
        if self.api_key is not None:
            auth = headers.get("authorization", "")
            got = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
            if got != self.api_key:
                return Reply(
                    401,
                    _error(
                        f"Incorrect API key provided: {got}. You can find your API key at "
                        "https://platform.openai.com/account/api-keys.",
                        "invalid_request_error",
                        code="invalid_api_key",
                    ),
                )
        if route == "/v1/models":
            now = int(time.time())
            data = [{"id": m, "object": "model", "created": now, "owned_by": "fake"} for m in self.models]
            return Reply(200, {"object": "list", "data": data})
        if route in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            if not isinstance(body, dict):
                return Reply(400, _error("We could not parse the JSON body of your request.", "invalid_request_error"))
            try:
                return self._embed(body) if route == "/v1/embeddings" else self._complete(route, body)
            except _BadRequest as exc:
                return Reply(exc.status, _error(exc.message, exc.kind, param=exc.param, code=exc.code))
        return Reply(404, _error(f"Invalid URL (POST {route})", "invalid_request_error"))

    def _complete(self, route: str, body: dict[str, Any]) -> Reply:
        chat = route.endswith("/chat/completions")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest("you must provide a model parameter", param="model")
        if model not in self.models:
            raise _BadRequest(
                f"The model `{model}` does not exist or you do not have access to it.",
                status=404,
                code="model_not_found",
                param="model",
            )
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _BadRequest("'messages' must be a non-empty array", param="messages")
            prompt_text = " ".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise _BadRequest("'prompt' must be a string", param="prompt")
            prompt_text = prompt
        n_prompt = len(tokenize(prompt_text))
        if n_prompt > self.context_window:
            raise _BadRequest(
                f"This model's maximum context length is {self.context_window} tokens. However, your messages "
                f"resulted in {n_prompt} tokens. Please reduce the length of the messages.",
                code="context_length_exceeded",
                param="messages" if chat else "prompt",
            )
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise _BadRequest(f"Invalid 'max_tokens': integer below minimum value. Got {limit!r}.", param="max_tokens")
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4:
            raise _BadRequest("Invalid 'stop': array too long. Expected at most 4 items.", param="stop")
        n = body.get("n", 1)
        if not isinstance(n, int) or not 1 <= n <= 128:
            raise _BadRequest(f"Invalid 'n': must be an integer from 1 to 128, got {n!r}.", param="n")
        calls = _tool_calls(body) if chat else []
        reply = self.reply_text
        if chat and isinstance(body["messages"][-1], dict) and body["messages"][-1].get("role") == "tool":
            reply = f"The tool said: {body['messages'][-1].get('content')}"
        fmt = body.get("response_format") if chat else None
        if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
            schema = (fmt.get("json_schema") or {}).get("schema") or {
                "type": "object",
                "properties": {"answer": {"type": "string"}},
            }
            reply = json.dumps(example_of(schema))

        tokens, finish = self._generate(limit, stops, reply)
        finish = "tool_calls" if calls else (self.finish_override or finish)
        text = "".join(tokens) if not calls else ""
        tokens = tokens if not calls else []
        reasoning = "Thinking it over." if chat and body.get("reasoning_effort") else ""
        stream = bool(body.get("stream")) and not self.ignore_stream
        with self.lock:
            self.served.append(Served(route, text, finish, n_prompt, len(tokens), stream))
            bad_event = stream and self._bad_events > 0
            if bad_event:
                self._bad_events -= 1

        want_lp = bool(body.get("logprobs")) if chat else body.get("logprobs") is not None
        top_n = int(body.get("top_logprobs") or 0) if chat else int(body.get("logprobs") or 0)
        produced = len(tokens) * n + len(calls) * 8 + (3 if reasoning else 0)
        usage: dict[str, Any] = {
            "prompt_tokens": n_prompt,
            "completion_tokens": produced,
            "total_tokens": n_prompt + produced,
        }
        if chat:
            usage["prompt_tokens_details"] = {"cached_tokens": 0}
            usage["completion_tokens_details"] = {"reasoning_tokens": 3 if reasoning else 0}
        ids = {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
        }
        if not stream:
            if chat:
                choices: list[dict[str, Any]] = []
                for k in range(n):
                    toks = _variant(tokens, k, limit)
                    message: dict[str, Any] = {"role": "assistant", "content": "".join(toks) if not calls else None}
                    message["refusal"] = None
                    if reasoning:
                        message["reasoning_content"] = reasoning
                    if calls:
                        message["tool_calls"] = calls
                    choices.append(
                        {
                            "index": k,
                            "message": message,
                            "logprobs": {"content": _chat_logprobs(toks, 0, top_n), "refusal": None}
                            if want_lp
                            else None,
                            "finish_reason": finish,
                        }
                    )
                return Reply(200, {**ids, "object": "chat.completion", "choices": choices, "usage": usage})
            choice = {
                "index": 0,
                "text": text,
                "logprobs": _completion_logprobs(tokens, 0, top_n, 0) if want_lp else None,
                "finish_reason": finish,
            }
            return Reply(200, {**ids, "object": "text_completion", "choices": [choice], "usage": usage})

        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and not self.omit_usage
        obj = "chat.completion.chunk" if chat else "text_completion"
        extra = {"usage": None} if include_usage else {}
        events: list[dict[str, Any]] = []
        for k in range(n):
            events += _stream_choice(k, _variant(tokens, k, limit), chat, want_lp, top_n, calls, reasoning, finish)
        out = [_sse({**ids, "object": obj, "choices": [c], **extra}) for c in events]
        if include_usage:
            out.append(_sse({**ids, "object": obj, "choices": [], "usage": usage}))
        out.append("data: [DONE]\n\n")
        if bad_event:
            out.insert(min(3, len(out) - 1), 'data: {"id": "broken", "choices": [\n\n')
        return Reply(200, events=out)

    def _embed(self, body: dict[str, Any]) -> Reply:
        model = body.get("model")
        if model not in self.embedding_models:
            raise _BadRequest(
                f"The model `{model}` does not exist or you do not have access to it.",
                status=404,
                code="model_not_found",
                param="model",
            )
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not 1 <= len(texts) <= 2048 or not all(isinstance(t, str) for t in texts):
            raise _BadRequest("'input' must be a string or an array of 1 to 2048 strings", param="input")
        if "" in texts:
            raise _BadRequest("'$.input' is invalid: an input is an empty string", param="input")
        dims = body.get("dimensions", EMBEDDING_DIMENSIONS)
        if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= EMBEDDING_DIMENSIONS:
            raise _BadRequest(f"This model does not support specifying dimensions of {dims!r}.", param="dimensions")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            message = f"Invalid 'encoding_format': expected float or base64, got {fmt!r}."
            raise _BadRequest(message, param="encoding_format")
        data = []
        for i, text in enumerate(texts):
            vector = embedding_of(text, dims)
            packed = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector if fmt == "float" else packed})
        tokens = sum(len(tokenize(t)) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return Reply(200, {"object": "list", "data": data, "model": model, "usage": usage})

    def _generate(self, limit: int | None, stops: list[str], reply: str) -> tuple[list[str], str]:
        """The tokens of the answer and why it ended, honouring max_tokens and stop strings."""
        text = ""
        for i, tok in enumerate(tokenize(reply)):
            text += tok
            hits = [text.find(s) for s in stops if s and s in text]
            if hits:
                return tokenize(text[: min(hits)]), "stop"
            if limit is not None and i + 1 >= limit:
                return tokenize(text), "length"
        return tokenize(text), "stop"


def _stream_choice(
    k: int,
    tokens: list[str],
    chat: bool,
    want_lp: bool,
    top_n: int,
    calls: list[dict[str, Any]],
    reasoning: str,
    finish: str,
) -> list[dict[str, Any]]:
    """The stream events of choice `k`, as OpenAI sends them."""
    events: list[dict[str, Any]] = []
    if chat:
        role = {"role": "assistant", "content": "", "refusal": None}
        events.append({"index": k, "delta": role, "logprobs": None, "finish_reason": None})
        for piece in tokenize(reasoning):
            events.append({"index": k, "delta": {"reasoning_content": piece}, "logprobs": None, "finish_reason": None})
        for j, call in enumerate(calls):
            head = {
                "index": j,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            events.append({"index": k, "delta": {"tool_calls": [head]}, "logprobs": None, "finish_reason": None})
            args = call["function"]["arguments"]
            for at in range(0, len(args), 7):
                part = {"index": j, "function": {"arguments": args[at : at + 7]}}
                events.append({"index": k, "delta": {"tool_calls": [part]}, "logprobs": None, "finish_reason": None})
    offset = 0
    for i, tok in enumerate(tokens):
        if chat:
            lp = {"content": _chat_logprobs([tok], i, top_n), "refusal": None} if want_lp else None
            events.append({"index": k, "delta": {"content": tok}, "logprobs": lp, "finish_reason": None})
        else:
            lp = _completion_logprobs([tok], i, top_n, offset) if want_lp else None
            events.append({"index": k, "text": tok, "logprobs": lp, "finish_reason": None})
        offset += len(tok)
    if chat:
        events.append({"index": k, "delta": {}, "logprobs": None, "finish_reason": finish})
    else:
        events.append({"index": k, "text": "", "logprobs": None, "finish_reason": finish})
    return events


def _variant(tokens: list[str], k: int, limit: int | None) -> list[str]:
    """Choice k's tokens: the answer itself for choice 0, "Choice k:" and the answer for the
    others (each within max_tokens, as the real API keeps every choice)."""
    out = tokens if k == 0 or not tokens else ["Choice", f" {k}:", " " + tokens[0].lstrip(), *tokens[1:]]
    return out[:limit] if isinstance(limit, int) else out


def example_of(schema: Any) -> Any:
    """A deterministic instance of a JSON schema (the subset tools and response formats use)."""
    if not isinstance(schema, dict):
        return None
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return example_of(schema[key][0])
    kind = schema.get("type", "object")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: example_of(sub) for name, sub in props.items()}
    if kind == "array":
        return [example_of(schema.get("items") or {"type": "string"})]
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1)))
    if kind == "number":
        return float(max(1, schema.get("minimum", 1)))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "Paris"


def _tool_calls(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The calls the fake model makes for this request (none when it answers in text)."""
    tools = body.get("tools") or []
    names = [t["function"]["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    messages = body["messages"]
    answered: set[str] = set()
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            continue
        for call in m.get("tool_calls") or ():
            answered.add(call.get("id"))
        if m.get("role") == "tool" and m.get("tool_call_id") not in answered:
            raise _BadRequest(
                "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
                "'tool_calls'.",
                param=f"messages.[{i}].role",
            )
    choice = body.get("tool_choice", "auto" if tools else "none")
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        if wanted not in names:
            raise _BadRequest(f"Invalid 'tool_choice': no function named {wanted!r} in tools.", param="tool_choice")
        chosen = [wanted]
    elif choice == "required":
        if not names:
            raise _BadRequest("'tool_choice' required needs tools.", param="tool_choice")
        chosen = names[:1]
    elif choice == "auto" and names and isinstance(messages[-1], dict) and messages[-1].get("role") == "user":
        said = str(messages[-1].get("content") or "").lower()
        chosen = [name for name in names if any(w in name.lower() and w in said for w in ("weather", "time"))]
        if body.get("parallel_tool_calls") is False:
            chosen = chosen[:1]
    else:
        chosen = []
    schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools if isinstance(t, dict)}
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:20]}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(example_of(schemas[name]))},
        }
        for name in chosen
    ]


class _BadRequest(Exception):
    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.kind, self.param, self.code = message, status, kind, param, code


def _error(message: str, kind: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _chat_logprobs(tokens: list[str], first: int, top_n: int) -> list[dict[str, Any]]:
    out = []
    for i, tok in enumerate(tokens, start=first):
        lp = token_logprob(i, tok)
        top = [{"token": tok, "logprob": lp, "bytes": list(tok.encode())}]
        top += [{"token": f"<alt{k}>", "logprob": lp - k, "bytes": None} for k in range(1, top_n)]
        out.append({"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": top[:top_n]})
    return out


def _completion_logprobs(tokens: list[str], first: int, top_n: int, offset: int) -> dict[str, Any]:
    lps = [token_logprob(i, tok) for i, tok in enumerate(tokens, start=first)]
    offsets, at = [], offset
    for tok in tokens:
        offsets.append(at)
        at += len(tok)
    top = [{tok: lp, **{f"<alt{k}>": lp - k for k in range(1, top_n)}} for tok, lp in zip(tokens, lps, strict=True)]
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": top, "text_offset": offsets}
