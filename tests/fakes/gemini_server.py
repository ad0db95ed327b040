"""A fake Gemini API (Google AI, `generativelanguage`) on 127.0.0.1 speaking the real wire format.

Routes: `POST /{version}/models/{model}:generateContent` (one `GenerateContentResponse`) and
`POST /{version}/models/{model}:streamGenerateContent?alt=sse` (SSE `data: <GenerateContentResponse
json>` events, one text part per token; the last carries `finishReason`; every event carries the
running `usageMetadata`). `{version}` is any of v1, v1beta, v1alpha: google-genai 3.x sends v1 by
default (or `HttpOptions.api_version`), and each call records the one it used (`versions`).
`POST /{version}/models/{model}:batchEmbedContents` embeds, for the models in `embedding_models`
(the route google-genai's `embed_content` calls on the Gemini API; `:embedContent` is Vertex
AI's): `requests[]`, each `{model: "models/<the same model>", content: {parts: [{text}]},
outputDimensionality?}`, answered `{"embeddings": [{"values": [...]}], "usageMetadata"}` in
order. Vectors come from a hash of the text (`embedding_of`: `EMBEDDING_DIMENSIONS` numbers of
unit length); `outputDimensionality` keeps the first N without scaling them back to unit length,
as Gemini does; usage counts the texts' tokens.

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

Tools as the API has them: `tools[].functionDeclarations` (`parametersJsonSchema` or
`parameters`; fields are read by their camelCase or proto snake_case names, as the API does, since
google-genai sends some as `parameters_json_schema`, `mime_type`, `include_thoughts`) and
`toolConfig.functionCallingConfig` (mode AUTO / ANY / NONE, `allowedFunctionNames` only with ANY).
When functions are declared, the last turn is the user's text and the mode is ANY, or AUTO with the
text mentioning "weather", the answer is `parallel_calls` `functionCall` parts (the allowed or first
function, args valid for its schema: `example_value`), whole in one response, finishReason STOP,
the first part with a `thoughtSignature` (`THOUGHT_SIGNATURE`; `call_ids` gives each call an `id`).
Checked like Gemini 3: a model turn's first functionCall part must carry that signature or Google's
placeholder `skip_thought_signature_validator`; a turn of functionResponse parts must answer the
previous model turn's calls one for one (names in order) with object responses. When the last turn
holds function responses the answer quotes them ("The tool said: <result>; ..."). JSON output
(`responseMimeType` application/json): a value of `responseJsonSchema`, else {"answer": reply}.
Images: `inlineData` with an image mimeType and base64 data (standard or URL-safe); `fileData` is
refused. `candidateCount` N: N identical candidates (index 0..N-1). `thought_text` with
`thinkingConfig.includeThoughts`: a thought part first and `thoughtsTokenCount`; `cached_tokens`:
`cachedContentTokenCount`.

Extra knobs besides `FakeProvider`'s: `error_event_next(code, after)` (the next stream sends a
`data: {"error": ...}` event after `after` text events), `bad_event_next()` (the next stream
carries an event whose data is not JSON), `echo_key`. `served` lists what every successful call
answered. `reset()` forgets calls, faults and knobs, so one fake can serve a whole test module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.anthropic_server import TOOL_WORD, example_value
from tests.fakes.server import FakeProvider, Reply

THOUGHT_SIGNATURE = base64.b64encode(b"signature-of-the-fake-gemini").decode()
SKIP_SIGNATURE = "skip_thought_signature_validator"  # Google's documented placeholder
_URL_SAFE = str.maketrans("-_", "+/")

_TOKEN = re.compile(r"\s*\S+|\s+$")
DEFAULT_REPLY = "Hello from the fake Gemini, one word at a time, as a real stream would."
_ROUTE = re.compile(
    r"^/(v1|v1beta|v1alpha)/models/([^/:]+):(generateContent|streamGenerateContent|batchEmbedContents)$"
)
EMBEDDING_DIMENSIONS = 48

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


def embedding_of(text: str) -> list[float]:
    """The fake's whole vector of `text`: `EMBEDDING_DIMENSIONS` numbers of unit length."""
    digest = hashlib.sha512(text.encode()).digest()[:EMBEDDING_DIMENSIONS]
    values = [(b - 127.5) / 127.5 for b in digest]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


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
    tool_calls: tuple[tuple[str, Any], ...] = ()  # (name, args) of each functionCall part
    candidates: int = 1


class FakeGemini(FakeProvider):
    def __init__(self, api_key: str | None = None, models: tuple[str, ...] = ("gemini-fake",)) -> None:
        super().__init__()
        self.api_key = api_key
        self.models = models
        self.embedding_models = ("gemini-embedding-fake",)
        self.reply_text = DEFAULT_REPLY
        self.context_window = 4096
        self.finish_override: str | None = None
        self.echo_key = True
        self.served: list[Served] = []
        self.versions: list[str] = []
        self._error_events: list[tuple[int, str, int]] = []
        self._bad_events = 0
        self._defaults()

    def _defaults(self) -> None:
        self.parallel_calls = 1  # functionCall parts per tool-calling answer
        self.thought_text = ""  # with thinkingConfig.includeThoughts, a thought part before the answer
        self.cached_tokens = 0  # reported as usageMetadata.cachedContentTokenCount
        self.call_ids = False  # give every functionCall an `id` (as newer models may)

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
        self._defaults()

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
        served_here = self.embedding_models if method == "batchEmbedContents" else self.models
        if model not in served_here:
            return Reply(404, error_json(404, f"models/{model} is not found for API version {version}."))
        if not isinstance(body, dict):
            return Reply(400, error_json(400, "Invalid JSON payload received."))
        if method == "batchEmbedContents":
            return _embed(model, body)
        problem = self._check(body)
        if problem is not None:
            return problem
        config = body.get("generationConfig") or {}
        calls = _wanted_calls(body, self.parallel_calls, self.call_ids)
        if calls:
            text, finish = "", self.finish_override or "STOP"
        else:
            text, finish = self._answer(config, _reply_for(body, self.reply_text))
        thought = self.thought_text if field(config.get("thinkingConfig") or {}, "includeThoughts") else ""
        n = int(config.get("candidateCount") or 1)
        prompt_tokens = _prompt_tokens(body)
        tokens = tokenize(text)
        stream = method == "streamGenerateContent"
        top_n = int(config.get("logprobs") or 0)
        lp = _Logprobs(tokens, top_n) if config.get("responseLogprobs") is True else None
        served_lps = tuple((t, token_logprob(i, t)) for i, t in enumerate(tokens)) if lp is not None else None
        answer_tokens = len(tokens) + sum(len(tokenize(json.dumps(c["functionCall"]["args"]))) for c in calls)
        served = Served(version, text, finish, prompt_tokens, answer_tokens * n, stream, served_lps)
        served.tool_calls = tuple((c["functionCall"]["name"], c["functionCall"]["args"]) for c in calls)
        served.candidates = n
        with self.lock:
            self.served.append(served)
        usage = _usage(prompt_tokens, answer_tokens * n, len(tokenize(thought)) * n, self.cached_tokens)
        if not stream:
            whole = lp.result(0, len(tokens)) if lp is not None else None
            parts = [{"text": thought, "thought": True}] if thought else []
            parts += calls or ([{"text": text}] if text else [])
            return Reply(200, _response(parts, finish, usage, whole, n))
        if parse_qs(split.query).get("alt") != ["sse"]:
            return Reply(400, error_json(400, "this fake streams only with alt=sse"))
        return Reply(events=self._events(tokens, finish, usage, lp, calls, thought, n))

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
        problem = _check_contents(contents) or _check_tools(body)
        if problem is not None:
            return Reply(400, error_json(400, problem))
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

    def _answer(self, config: dict[str, Any], full: str) -> tuple[str, str]:
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

    def _events(
        self,
        tokens: list[str],
        finish: str,
        usage: dict[str, Any],
        lp: _Logprobs | None,
        calls: list[dict[str, Any]],
        thought: str,
        n: int,
    ) -> list[str]:
        with self.lock:
            error = self._error_events.pop(0) if self._error_events else None
            bad = self._bad_events > 0
            self._bad_events -= int(bad)
        events: list[str] = []
        if thought:
            events.append(_sse(_response([{"text": thought, "thought": True}], None, usage, None, n)))
        if calls:  # a function call comes whole, in one response
            return [*events, _sse(_response(calls, finish, usage, None, n))]
        for i, token in enumerate(tokens):
            if error is not None and i == error[2]:
                break
            last = i == len(tokens) - 1
            part = lp.result(i, i + 1) if lp is not None else None
            running = {**usage, "candidatesTokenCount": (i + 1) * n}
            events.append(_sse(_response([{"text": token}], finish if last else None, running, part, n)))
            if bad and i == 0:
                events.append('data: {"candidates": [{"content": {"parts": [{"text": \n\n')
        if error is not None:
            events.append(_sse(error_json(error[0], error[1])))
        elif not tokens:
            events.append(_sse(_response([], finish, usage, lp.result(0, 0) if lp is not None else None, n)))
        return events


# ---- tools, as the API checks and answers them ----


def _check_contents(contents: list[dict[str, Any]]) -> str | None:
    calls: list[str] = []  # names of the functionCall parts of the last model turn
    for i, c in enumerate(contents):
        responses = [p["functionResponse"] for p in c["parts"] if isinstance(p, dict) and "functionResponse" in p]
        if responses:
            if c.get("role") == "model" or [r.get("name") for r in responses] != calls:
                return (
                    "Please ensure that the number of function response parts is equal to the number of function "
                    f"call parts of the function call turn. (contents[{i}])"
                )
            if not all(isinstance(r.get("response"), dict) for r in responses):
                return f"* GenerateContentRequest.contents[{i}].parts: functionResponse.response must be an object"
        first_call = True
        for j, p in enumerate(c["parts"]):
            at = f"contents[{i}].parts[{j}]"
            if "inlineData" in p:
                blob = p["inlineData"]
                if not str(field(blob, "mimeType", "")).startswith("image/"):
                    return f"{at}.inlineData.mimeType: an image type is required"
                try:
                    # proto JSON bytes: standard or URL-safe base64 (google-genai sends URL-safe)
                    base64.b64decode(str(blob.get("data") or "").translate(_URL_SAFE), validate=True)
                except (binascii.Error, ValueError):
                    return f"{at}.inlineData.data: invalid base64"
            if "fileData" in p:
                return f"{at}.fileData: Cannot fetch content from the provided URL."
            if "functionCall" in p:
                if c.get("role") != "model":
                    return f"{at}: a functionCall part belongs to a model turn"
                if first_call and p.get("thoughtSignature") not in (THOUGHT_SIGNATURE, SKIP_SIGNATURE):
                    return (
                        f"Function call is missing a thought_signature in functionCall parts. ({at}) This is "
                        "required for tools to work correctly."
                    )
                if not isinstance(p["functionCall"].get("args", {}), dict):
                    return f"{at}.functionCall.args: must be an object"
                first_call = False
        if c.get("role") == "model":
            calls = [p["functionCall"]["name"] for p in c["parts"] if "functionCall" in p]
        elif not responses:
            calls = []
    return None


def _declarations(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The function declarations, their fields read as proto JSON allows (camelCase or the proto's
    snake_case names: google-genai sends `parameters_json_schema` as it is)."""
    out = []
    for tool in body.get("tools") or []:
        for d in tool.get("functionDeclarations") or tool.get("function_declarations") or []:
            d = dict(d)
            for camel in ("parametersJsonSchema", "responseJsonSchema"):
                if _snake(camel) in d:
                    d[camel] = d.pop(_snake(camel))
            out.append(d)
    return out


def _snake(camel: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)


def field(obj: dict[str, Any], camel: str, default: Any = None) -> Any:
    """A field of a proto JSON object by its camelCase name or its proto (snake_case) name: the API
    reads both, and google-genai sends some nested fields (`mime_type`, `include_thoughts`) so."""
    return obj.get(camel, obj.get(_snake(camel), default))


def _check_tools(body: dict[str, Any]) -> str | None:
    names = []
    for i, d in enumerate(_declarations(body)):
        if not isinstance(d.get("name"), str):
            return f"* GenerateContentRequest.tools[0].function_declarations[{i}].name: name is required"
        if "parameters" in d and "parametersJsonSchema" in d:
            return f"function_declarations[{i}]: parameters and parametersJsonSchema are mutually exclusive"
        schema = d.get("parametersJsonSchema", d.get("parameters"))
        if schema is not None and (not isinstance(schema, dict) or schema.get("type") not in ("object", "OBJECT")):
            return f"function_declarations[{i}].parameters: must be an object schema"
        names.append(d["name"])
    config = (body.get("toolConfig") or {}).get("functionCallingConfig")
    if config is None:
        return None
    mode = config.get("mode", "AUTO")
    if mode not in ("AUTO", "ANY", "NONE", "VALIDATED"):
        return f"toolConfig.functionCallingConfig.mode: invalid value {mode!r}"
    allowed = config.get("allowedFunctionNames")
    if allowed is not None and (mode != "ANY" or not set(allowed) <= set(names)):
        return "allowedFunctionNames may be set only with mode ANY and must name declared functions"
    if mode != "NONE" and not names:
        return "toolConfig needs tools with function declarations"
    return None


def _wanted_calls(body: dict[str, Any], parallel: int, with_ids: bool) -> list[dict[str, Any]]:
    """The functionCall parts the "model" answers with: when the request declares functions, its
    last turn is the user's text (not function responses) and the mode is ANY, or AUTO (the
    default) with the user's text mentioning TOOL_WORD. The first part carries a thoughtSignature."""
    declarations = _declarations(body)
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode = config.get("mode", "AUTO")
    last = body["contents"][-1]
    parts = last["parts"] if last.get("role") in (None, "user") else []
    if not declarations or mode == "NONE" or not parts or any("functionResponse" in p for p in parts):
        return []
    asked = TOOL_WORD in " ".join(str(p.get("text", "")) for p in parts).lower()
    if mode != "ANY" and not asked:
        return []
    allowed = config.get("allowedFunctionNames") or [declarations[0]["name"]]
    declaration = next(d for d in declarations if d["name"] == allowed[0])
    schema = declaration.get("parametersJsonSchema", declaration.get("parameters")) or {"type": "object"}
    out = []
    for k in range(max(1, parallel)):
        call: dict[str, Any] = {"name": declaration["name"], "args": example_value(schema)}
        if with_ids:
            call["id"] = f"fc-{zlib.crc32(json.dumps(body).encode()):08x}-{k}"
        part: dict[str, Any] = {"functionCall": call}
        if k == 0:
            part["thoughtSignature"] = THOUGHT_SIGNATURE
        out.append(part)
    return out


def _reply_for(body: dict[str, Any], default: str) -> str:
    """Text answers: JSON when asked (a value of the schema), the function responses quoted after
    a call, else the fake's reply."""
    config = body.get("generationConfig") or {}
    if config.get("responseMimeType") == "application/json":
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        return json.dumps(example_value(schema) if schema else {"answer": default})
    last = body["contents"][-1]
    responses = [p["functionResponse"] for p in last["parts"] if "functionResponse" in p]
    if responses:
        quoted = [
            str(r["response"]["result"]) if set(r["response"]) == {"result"} else json.dumps(r["response"])
            for r in responses
        ]
        return "The tool said: " + "; ".join(quoted)
    return default


def _embed(model: str, body: dict[str, Any]) -> Reply:
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        return Reply(400, error_json(400, "* BatchEmbedContentsRequest.requests: must not be empty"))
    embeddings, tokens = [], 0
    for i, request in enumerate(requests):
        where = f"* BatchEmbedContentsRequest.requests[{i}]"
        if not isinstance(request, dict) or request.get("model") != f"models/{model}":
            return Reply(400, error_json(400, f"{where}.model: must be the model of the request's URL"))
        parts = (request.get("content") or {}).get("parts")
        texts = [p.get("text") for p in parts or () if isinstance(p, dict)]
        if not texts or not all(isinstance(t, str) and t for t in texts):
            return Reply(400, error_json(400, f"{where}.content: must hold non-empty text parts"))
        size = request.get("outputDimensionality", EMBEDDING_DIMENSIONS)
        if not isinstance(size, int) or not 1 <= size <= EMBEDDING_DIMENSIONS:
            return Reply(400, error_json(400, f"{where}.output_dimensionality: must be 1 to {EMBEDDING_DIMENSIONS}"))
        text = "".join(texts)
        embeddings.append({"values": embedding_of(text)[:size]})
        tokens += len(tokenize(text))
    usage = {"promptTokenCount": tokens, "totalTokenCount": tokens}
    return Reply(200, {"embeddings": embeddings, "usageMetadata": usage})


def _key_of(path: str, headers: dict[str, str]) -> str:
    if headers.get("x-goog-api-key"):
        return headers["x-goog-api-key"]
    return (parse_qs(urlsplit(path).query).get("key") or [""])[0]


def _prompt_tokens(body: dict[str, Any]) -> int:
    texts = []
    system = body.get("systemInstruction") or {}
    texts += [p.get("text", "") for p in system.get("parts") or [] if isinstance(p, dict)]
    for c in body.get("contents") or []:
        for p in c.get("parts") or []:
            if isinstance(p, dict):
                texts.append(p["text"] if "text" in p else json.dumps(p.get("functionResponse", "")))
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


def _usage(prompt_tokens: int, completion_tokens: int, thoughts: int = 0, cached: int = 0) -> dict[str, Any]:
    usage = {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": completion_tokens,
        "totalTokenCount": prompt_tokens + completion_tokens + thoughts,
    }
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    if cached:
        usage["cachedContentTokenCount"] = cached
    return usage


def _response(
    parts: list[dict[str, Any]],
    finish: str | None,
    usage: dict[str, Any],
    logprobs: dict[str, Any] | None = None,
    n: int = 1,
) -> dict[str, Any]:
    candidates = []
    for index in range(n):
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": index}
        if finish is not None:
            candidate["finishReason"] = finish
        if logprobs is not None:
            candidate["logprobsResult"] = logprobs
        candidates.append(candidate)
    return {"candidates": candidates, "usageMetadata": usage, "modelVersion": "gemini-fake-001", "responseId": "fake"}


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\r\n\r\n"
