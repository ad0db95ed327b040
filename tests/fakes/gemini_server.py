"""A fake Gemini API (Google AI, `generativelanguage`) on 127.0.0.1 speaking the real wire format.

Routes: `POST /{version}/models/{model}:generateContent` (one `GenerateContentResponse`) and
`POST /{version}/models/{model}:streamGenerateContent?alt=sse` (SSE `data: <GenerateContentResponse
json>` events, one text part per token; the last carries `finishReason`; every event carries the
running `usageMetadata`). `{version}` is any of v1, v1beta, v1alpha: google-genai 3.x sends v1 by
default (or `HttpOptions.api_version`), and each call records the one it used (`versions`).

The "model" answers `reply_text` whatever it is asked. Tokens are words with their leading
whitespace; prompt tokens are the words of the system instruction and of every content part.
`generationConfig.maxOutputTokens` cuts the answer after that many tokens (MAX_TOKENS);
`stopSequences` cut it before the first one found (STOP); `finish_override` reports another
reason (e.g. "SAFETY").

Logprobs as the API gives them: only when `generationConfig.responseLogprobs` is true does the
candidate carry `logprobsResult`: `chosenCandidates` (one `{token, tokenId, logProbability}` per
generated token, in order), `logProbabilitySum`, and, when `generationConfig.logprobs` is N > 0,
`topCandidates` (one `{candidates: [...]}` per token, N entries sorted by logProbability, highest
first). In `generateContent` it covers the whole answer; in `streamGenerateContent` each event's
candidate covers that event's tokens. Values are deterministic per position and token
(`token_logprob`). `logprobs` without `responseLogprobs`, or above 20, is a 400.

Checks made like the real API: the key (`x-goog-api-key` header or `key` query; a wrong key is a
400 INVALID_ARGUMENT "API key not valid" with reason API_KEY_INVALID, as Google answers; the
message echoes the key received so tests can check atomr never repeats it), known models,
`contents` non-empty with roles user/model only (a "system" role is a 400: the system prompt is
`systemInstruction`), at most 5 stop sequences, `logprobs` (see above), the prompt within
`context_window` tokens. Error
bodies are `{"error": {"code", "message", "status"}}`.

Extra knobs besides `FakeProvider`'s: `error_event_next(code, after)` (the next stream sends a
`data: {"error": ...}` event after `after` text events), `bad_event_next()` (the next stream
carries an event whose data is not JSON), `echo_key`. `served` lists what every successful call
answered. `reset()` forgets calls, faults and knobs, so one fake can serve a whole test module.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.server import FakeProvider, Reply

_TOKEN = re.compile(r"\s*\S+|\s+$")
DEFAULT_REPLY = "Hello from the fake Gemini, one word at a time, as a real stream would."
_ROUTE = re.compile(r"^/(v1|v1beta|v1alpha)/models/([^/:]+):(generateContent|streamGenerateContent)$")

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def tokenize(text: str) -> list[str]:
    """The fake's tokens: words with their leading whitespace."""
    return _TOKEN.findall(text)


def token_logprob(index: int, token: str) -> float:
    """The fake's deterministic, plausible logprob for the token at `index` of an answer."""
    return -round(0.05 + 0.01 * (index % 7) + 0.001 * len(token), 6)


def error_json(code: int, message: str, status: str | None = None, details: list[Any] | None = None) -> dict[str, Any]:
    """A Google API error body."""
    err: dict[str, Any] = {"code": code, "message": message, "status": status or STATUS_NAMES.get(code, "UNKNOWN")}
    if details:
        err["details"] = details
    return {"error": err}


@dataclass
class Served:
    version: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    stream: bool
    logprobs: tuple[tuple[str, float], ...] | None = None  # (token, logProbability) served, if asked


class FakeGemini(FakeProvider):
    def __init__(self, api_key: str | None = None, models: tuple[str, ...] = ("gemini-fake",)) -> None:
        super().__init__()
        self.api_key = api_key
        self.models = models
        self.reply_text = DEFAULT_REPLY
        self.context_window = 4096
        self.finish_override: str | None = None
        self.echo_key = True
        self.served: list[Served] = []
        self.versions: list[str] = []
        self._error_events: list[tuple[int, str, int]] = []
        self._bad_events = 0

    def reset(self) -> None:
        """Forget calls, pending faults and knobs: one fake can serve many tests."""
        self.forget_calls()
        with self.lock:
            self.served.clear()
            self.versions.clear()
            self._error_events.clear()
            self._bad_events = 0
        self.reply_text = DEFAULT_REPLY
        self.finish_override = None
        self.echo_key = True

    # knobs
    def error_event_next(self, code: int = 503, message: str = "The model is overloaded.", after: int = 0) -> None:
        with self.lock:
            self._error_events.append((code, message, after))

    def bad_event_next(self) -> None:
        with self.lock:
            self._bad_events += 1

    def error_body(self, status: int) -> Any:
        message = f"fake error {status}"
        if self.echo_key:
            with self.lock:
                last = self.calls[-1] if self.calls else None
            message += f" for key {_key_of(last.path, last.headers) if last else '<none>'}"
        return error_json(status, message)

    # the API
    def handle(self, path: str, headers: dict[str, str], body: Any) -> Reply:
        split = urlsplit(path)
        route = _ROUTE.match(split.path)
        if route is None:
            return Reply(404, error_json(404, f"The requested URL {split.path} was not found on this server."))
        version, model, method = route.groups()
        with self.lock:
            self.versions.append(version)
        if self.api_key is not None:
            got = _key_of(path, headers)
            if got != self.api_key:
                detail = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
                return Reply(
                    400,
                    error_json(400, f"API key not valid. Please pass a valid API key. (got {got})", details=[detail]),
                )
        if model not in self.models:
            return Reply(404, error_json(404, f"models/{model} is not found for API version {version}."))
        if not isinstance(body, dict):
            return Reply(400, error_json(400, "Invalid JSON payload received."))
        problem = self._check(body)
        if problem is not None:
            return problem
        config = body.get("generationConfig") or {}
        text, finish = self._answer(config)
        prompt_tokens = _prompt_tokens(body)
        tokens = tokenize(text)
        stream = method == "streamGenerateContent"
        top_n = int(config.get("logprobs") or 0)
        lp = _Logprobs(tokens, top_n) if config.get("responseLogprobs") is True else None
        served_lps = tuple((t, token_logprob(i, t)) for i, t in enumerate(tokens)) if lp is not None else None
        with self.lock:
            self.served.append(Served(version, text, finish, prompt_tokens, len(tokens), stream, served_lps))
        if not stream:
            whole = lp.result(0, len(tokens)) if lp is not None else None
            return Reply(200, _response([text] if text else [], finish, prompt_tokens, len(tokens), whole))
        if parse_qs(split.query).get("alt") != ["sse"]:
            return Reply(400, error_json(400, "this fake streams only with alt=sse"))
        return Reply(events=self._events(tokens, finish, prompt_tokens, lp))

    def _check(self, body: dict[str, Any]) -> Reply | None:
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return Reply(400, error_json(400, "* GenerateContentRequest.contents: contents is not specified"))
        for i, c in enumerate(contents):
            role = c.get("role") if isinstance(c, dict) else None
            if role not in (None, "user", "model"):
                return Reply(
                    400,
                    error_json(400, f"Please use a valid role: user, model. (contents[{i}].role: {role!r})"),
                )
            if not isinstance(c.get("parts"), list) or not c["parts"]:
                return Reply(400, error_json(400, f"* GenerateContentRequest.contents[{i}].parts: must not be empty"))
        config = body.get("generationConfig") or {}
        stops = config.get("stopSequences") or []
        if len(stops) > 5:
            return Reply(400, error_json(400, "stop_sequences: at most 5 are allowed"))
        top_n = config.get("logprobs")
        if top_n is not None:
            if config.get("responseLogprobs") is not True:
                return Reply(400, error_json(400, "logprobs is only valid if responseLogprobs is true"))
            if not isinstance(top_n, int) or not 0 <= top_n <= 20:
                return Reply(400, error_json(400, f"logprobs must be in the range [0, 20], got {top_n!r}"))
        n = _prompt_tokens(body)
        if n > self.context_window:
            return Reply(
                400,
                error_json(
                    400,
                    f"The input token count ({n}) exceeds the maximum number of tokens allowed "
                    f"({self.context_window}).",
                ),
            )
        return None

    def _answer(self, config: dict[str, Any]) -> tuple[str, str]:
        full = self.reply_text
        tokens = tokenize(full)
        limit = config.get("maxOutputTokens") or 8192
        limit_at = len("".join(tokens[:limit]))
        found = [(full.find(s), s) for s in config.get("stopSequences") or [] if s in full]
        if found:
            at, _ = min(found)
            if at < limit_at or len(tokens) <= limit:
                return full[:at], self.finish_override or "STOP"
        if len(tokens) > limit:
            return "".join(tokens[:limit]), self.finish_override or "MAX_TOKENS"
        return full, self.finish_override or "STOP"

    def _events(self, tokens: list[str], finish: str, prompt_tokens: int, lp: _Logprobs | None) -> list[str]:
        with self.lock:
            error = self._error_events.pop(0) if self._error_events else None
            bad = self._bad_events > 0
            self._bad_events -= int(bad)
        events: list[str] = []
        for i, token in enumerate(tokens):
            if error is not None and i == error[2]:
                break
            last = i == len(tokens) - 1
            part = lp.result(i, i + 1) if lp is not None else None
            events.append(_sse(_response([token], finish if last else None, prompt_tokens, i + 1, part)))
            if bad and i == 0:
                events.append('data: {"candidates": [{"content": {"parts": [{"text": \n\n')
        if error is not None:
            events.append(_sse(error_json(error[0], error[1])))
        elif not tokens:
            events.append(_sse(_response([], finish, prompt_tokens, 0, lp.result(0, 0) if lp is not None else None)))
        return events


def _key_of(path: str, headers: dict[str, str]) -> str:
    if headers.get("x-goog-api-key"):
        return headers["x-goog-api-key"]
    return (parse_qs(urlsplit(path).query).get("key") or [""])[0]


def _prompt_tokens(body: dict[str, Any]) -> int:
    texts = []
    system = body.get("systemInstruction") or {}
    texts += [p.get("text", "") for p in system.get("parts") or [] if isinstance(p, dict)]
    for c in body.get("contents") or []:
        texts += [p.get("text", "") for p in c.get("parts") or [] if isinstance(p, dict)]
    return sum(len(tokenize(t)) for t in texts if t)


class _Logprobs:
    """An answer's `logprobsResult`, whole or for a slice of its tokens."""

    def __init__(self, tokens: list[str], top_n: int) -> None:
        self.tokens = tokens
        self.top_n = top_n

    def result(self, start: int, end: int) -> dict[str, Any]:
        chosen = [_candidate(t, token_logprob(i, t)) for i, t in enumerate(self.tokens[start:end], start=start)]
        out: dict[str, Any] = {}
        if self.top_n > 0:
            out["topCandidates"] = [
                {
                    "candidates": [c]
                    + [_candidate(f"<alt{k}>", round(c["logProbability"] - k, 6)) for k in range(1, self.top_n)]
                }
                for c in chosen
            ]
        out["chosenCandidates"] = chosen
        out["logProbabilitySum"] = round(sum(c["logProbability"] for c in chosen), 6)
        return out


def _candidate(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "tokenId": zlib.crc32(token.encode()) % 256000, "logProbability": logprob}


def _response(
    texts: list[str],
    finish: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": t} for t in texts], "role": "model"}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    if logprobs is not None:
        candidate["logprobsResult"] = logprobs
    return {
        "candidates": [candidate],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": completion_tokens,
            "totalTokenCount": prompt_tokens + completion_tokens,
        },
        "modelVersion": "gemini-fake-001",
        "responseId": "fake-response",
    }


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\r\n\r\n"
