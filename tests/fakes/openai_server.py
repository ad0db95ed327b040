"""A fake OpenAI API on 127.0.0.1 speaking the real wire format, for the `openai` and `litellm` runners.

Routes: `POST /v1/chat/completions` (a `chat.completion` object, or with `"stream": true` SSE
`data: {chat.completion.chunk}` events: a role delta, one content delta per token, a chunk with
the finish_reason, a usage chunk when `stream_options.include_usage`, then `data: [DONE]`),
`POST /v1/completions` (the same for `text_completion`) and `GET /v1/models`.

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

Extra knobs besides `FakeProvider`'s: `finish_override` (the finish_reason to report instead,
e.g. "content_filter" or "tool_calls"), `bad_event_next()` (the next stream carries an event
whose data is not JSON), `omit_usage` (never send the usage chunk), `ignore_stream` (answer one
JSON object even when a stream was asked for, as some compatible servers do). `served` lists what every
successful call answered (text, finish_reason, usage), for tests to compare with. `reset()`
makes a long-lived fake (a module fixture) fresh again between tests.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tests.fakes.server import FakeProvider, Reply

_TOKEN = re.compile(r"\s*\S+|\s+$")
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
        if route in ("/v1/chat/completions", "/v1/completions"):
            if not isinstance(body, dict):
                return Reply(400, _error("We could not parse the JSON body of your request.", "invalid_request_error"))
            try:
                return self._complete(route, body)
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
        if int(body.get("n") or 1) != 1:
            raise _BadRequest("this fake answers n=1 only", param="n")

        tokens, finish = self._generate(limit, stops)
        finish = self.finish_override or finish
        text = "".join(tokens)
        stream = bool(body.get("stream")) and not self.ignore_stream
        with self.lock:
            self.served.append(Served(route, text, finish, n_prompt, len(tokens), stream))
            bad_event = stream and self._bad_events > 0
            if bad_event:
                self._bad_events -= 1

        want_lp = bool(body.get("logprobs")) if chat else body.get("logprobs") is not None
        top_n = int(body.get("top_logprobs") or 0) if chat else int(body.get("logprobs") or 0)
        usage = {
            "prompt_tokens": n_prompt,
            "completion_tokens": len(tokens),
            "total_tokens": n_prompt + len(tokens),
        }
        ids = {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
        }
        if not stream:
            if chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": {"content": _chat_logprobs(tokens, 0, top_n), "refusal": None} if want_lp else None,
                    "finish_reason": finish,
                }
                return Reply(200, {**ids, "object": "chat.completion", "choices": [choice], "usage": usage})
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
        if chat:
            role = {"role": "assistant", "content": "", "refusal": None}
            events.append({"index": 0, "delta": role, "logprobs": None, "finish_reason": None})
        offset = 0
        for i, tok in enumerate(tokens):
            if chat:
                lp = {"content": _chat_logprobs([tok], i, top_n), "refusal": None} if want_lp else None
                events.append({"index": 0, "delta": {"content": tok}, "logprobs": lp, "finish_reason": None})
            else:
                lp = _completion_logprobs([tok], i, top_n, offset) if want_lp else None
                events.append({"index": 0, "text": tok, "logprobs": lp, "finish_reason": None})
            offset += len(tok)
        if chat:
            events.append({"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish})
        else:
            events.append({"index": 0, "text": "", "logprobs": None, "finish_reason": finish})
        out = [_sse({**ids, "object": obj, "choices": [c], **extra}) for c in events]
        if include_usage:
            out.append(_sse({**ids, "object": obj, "choices": [], "usage": usage}))
        out.append("data: [DONE]\n\n")
        if bad_event:
            out.insert(min(3, len(out) - 1), 'data: {"id": "broken", "choices": [\n\n')
        return Reply(200, events=out)

    def _generate(self, limit: int | None, stops: list[str]) -> tuple[list[str], str]:
        """The tokens of the answer and why it ended, honouring max_tokens and stop strings."""
        text = ""
        for i, tok in enumerate(tokenize(self.reply_text)):
            text += tok
            hits = [text.find(s) for s in stops if s and s in text]
            if hits:
                return tokenize(text[: min(hits)]), "stop"
            if limit is not None and i + 1 >= limit:
                return tokenize(text), "length"
        return tokenize(text), "stop"


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
