"""How the `openai` runner reaches its server: the official SDK, or a lean aiohttp client.

Both speak the same two calls, `post` (a JSON answer, decoded; a body that is not JSON comes back
as its text) and `stream` (an SSE answer as decoded events, or a whole body where the server
ignored ``stream: true``), and raise errors the runner maps in one place (`OpenAIRunner.map_error`):
the SDK's exception classes, or this module's `StatusError` / `StreamError` and aiohttp's own,
which carry the same facts (status, the provider's error object, headers).

Why two: the SDK is the reference (its retries off, its generic `post`, no typed objects), but
its request building and httpx/aiohttp wrappers cost CPU on every call: measured on this 2-core
machine (scripts/bench/http_front.py, one run), the HTTP front added 1.16 ms p50 on the SDK
transport and 0.64 ms on the lean one, and served 890 against 1,569 requests/s at c=64. `LeanTransport`
sends the body with one pooled `aiohttp.ClientSession` and parses SSE lines itself (in the SDK's
rules: ``[DONE]`` ends the stream, an event whose data holds ``error`` raises). The runner
contract suite runs on both (`engine.transport: sdk | lean`), and ``scripts/bench/http_front.py``
measures both in one run.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any


class StatusError(Exception):
    """A non-2xx answer, with what the SDK's `APIStatusError` carries: the status, the provider's
    error object (``body["error"]`` when there is one, else the body, or its text), the headers."""

    def __init__(self, status_code: int, body: object, headers: Mapping[str, str]) -> None:
        self.status_code = status_code
        self.body = body.get("error", body) if isinstance(body, Mapping) else body
        self.headers = headers
        self.message = f"Error code: {status_code} - {body}"
        self.code: str | None = None
        super().__init__(self.message)


class StreamError(Exception):
    """An SSE event whose data holds an ``error`` (a failure after the stream began with 200)."""

    def __init__(self, error: object) -> None:
        self.body = error
        message = error.get("message") if isinstance(error, Mapping) else None
        self.message = message if isinstance(message, str) and message else "An error occurred during streaming"
        self.code: str | None = None
        super().__init__(self.message)


@dataclass
class StreamReply:
    """An answer to a streamed request: its content type, and its events or its whole body."""

    content_type: str
    events: AsyncIterator[object]
    body: bytes | None = None  # set instead of events when the server did not stream


def decode(raw: bytes) -> object:
    """JSON, or the text of a body that is not JSON (the runner reports it as malformed)."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


class SdkTransport:
    """The official SDK's generic `post` (no typed request transform, no pydantic answer objects)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def post(self, path: str, body: dict[str, Any], headers: Mapping[str, str] | None) -> object:
        options: dict[str, Any] = {"headers": dict(headers)} if headers else {}
        return await self.client.post(path, body=body, cast_to=object, options=options)

    @asynccontextmanager
    async def stream(
        self, path: str, body: dict[str, Any], headers: Mapping[str, str] | None
    ) -> AsyncIterator[StreamReply]:
        import openai

        options: dict[str, Any] = {"headers": dict(headers)} if headers else {}
        events = await self.client.post(
            path, body=body, cast_to=object, stream=True, stream_cls=openai.AsyncStream[object], options=options
        )
        async with events:
            ctype = str(events.response.headers.get("content-type", ""))
            if not ctype.startswith("text/event-stream"):
                yield StreamReply(ctype, _no_events(), await events.response.aread())
            else:
                yield StreamReply(ctype, events.__aiter__())

    async def close(self) -> None:
        await self.client.close()


class AnswerTooLarge(ValueError):
    """The server sent more than `max_response_bytes` (the runner reports it as malformed)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than engine.max_response_bytes ({limit} bytes); not read further")


class LeanTransport:
    """One pooled aiohttp session; requests and SSE handled here. An answer is read up to
    `max_response_bytes` (a whole body, or a stream's events added up), never further."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        timeout_s: float,
        max_connections: int,
        max_response_bytes: int = 32 << 20,
    ) -> None:
        import aiohttp

        self.max_bytes = max_response_bytes
        self.base = base_url.rstrip("/")
        self.headers = {"Content-Type": "application/json", "Accept": "application/json", **headers}
        self.stream_headers = {**self.headers, "Accept": "text/event-stream"}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        # one session per runner, made on the runner's loop (at load); limit: open connections
        self.session = aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=300)
        )

    def _headers(self, base: dict[str, str], extra: Mapping[str, str] | None) -> dict[str, str]:
        return {**base, **extra} if extra else base

    async def post(self, path: str, body: dict[str, Any], headers: Mapping[str, str] | None) -> object:
        data = json.dumps(body).encode()
        async with self.session.post(self.base + path, data=data, headers=self._headers(self.headers, headers)) as r:
            raw = await self._read(r)
            if r.status >= 300:
                raise StatusError(r.status, decode(raw), r.headers)
            return decode(raw)

    async def _read(self, r: Any) -> bytes:
        """The body, refused past `max_bytes` (declared or sent) without reading the rest."""
        if r.content_length is not None and r.content_length > self.max_bytes:
            raise AnswerTooLarge(self.max_bytes)
        body = bytearray()
        async for part in r.content.iter_chunked(1 << 16):
            body += part
            if len(body) > self.max_bytes:
                raise AnswerTooLarge(self.max_bytes)
        return bytes(body)

    @asynccontextmanager
    async def stream(
        self, path: str, body: dict[str, Any], headers: Mapping[str, str] | None
    ) -> AsyncIterator[StreamReply]:
        data = json.dumps(body).encode()
        async with self.session.post(
            self.base + path, data=data, headers=self._headers(self.stream_headers, headers)
        ) as r:
            if r.status >= 300:
                raise StatusError(r.status, decode(await self._read(r)), r.headers)
            ctype = r.headers.get("content-type", "")
            if not ctype.startswith("text/event-stream"):
                yield StreamReply(ctype, _no_events(), await self._read(r))
            else:
                yield StreamReply(ctype, self._events(r.content))

    async def _events(self, content: Any) -> AsyncIterator[object]:
        """Server-sent events' data, decoded: lines ``data: ...`` up to a blank line make one."""
        lines: list[str] = []
        event: str | None = None
        read = 0
        async for raw in content:
            read += len(raw)
            if read > self.max_bytes:
                raise AnswerTooLarge(self.max_bytes)
            line = raw.decode().rstrip("\r\n")
            if line:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "data":
                    lines.append(value)
                elif field == "event":
                    event = value
                continue
            if not lines:
                event = None
                continue
            payload = "\n".join(lines)
            lines, kind, event = [], event, None
            if payload.startswith("[DONE]"):
                return
            data = json.loads(payload)  # not JSON: a ValueError the runner reports as malformed
            if isinstance(data, Mapping) and data.get("error") and (kind is None or kind == "error"):
                raise StreamError(data["error"])
            yield data

    async def close(self) -> None:
        await self.session.close()


async def _no_events() -> AsyncIterator[object]:
    return
    yield  # an async generator that yields nothing
