"""An OpenAI-compatible server that misbehaves on purpose, on 127.0.0.1, for the safe-edges tests.

The model name picks the behaviour of ``POST /v1/chat/completions``:
- ``huge``: a 200 answer of 1 GiB (chunked, no length: read until a limit stops the reader);
- ``huge-declared``: the same with its ``Content-Length`` of 1 GiB declared;
- ``endless``: server-sent events for ever, one token each, whatever was asked (stream or not,
  max_tokens ignored);
- ``fast``: a stream of `FAST_TOKENS` tokens of 1 KiB each, sent as fast as the connection takes
  them (2 GiB in all: only back-pressure keeps it out of memory).

Every handler counts the bytes it managed to send (`sent[model]`), so a test can see that a
reader that stopped reading made the server stop too (its writes wait on the TCP window).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import defaultdict
from typing import Any

from aiohttp import web

GiB = 1 << 30
FAST_TOKENS = 2_000_000
_PIECE = 1 << 16


def _event(i: int, size: int = 0) -> bytes:
    """One token's event; `size`: pad its text to that many characters."""
    text = f" t{i}".ljust(size, "x")
    chunk = {
        "id": "chatcmpl-bad",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "bad",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class MisbehavingOpenAI:
    def __init__(self) -> None:
        self.sent: dict[str, int] = defaultdict(int)
        self.ended: dict[str, int] = defaultdict(int)  # responses that ended (client gone, or done)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> MisbehavingOpenAI:
        self._thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        model = str(body.get("model"))
        headers = {"content-type": "application/json"}
        if model == "huge-declared":
            headers["content-length"] = str(GiB)
        elif model in ("endless", "fast"):
            headers["content-type"] = "text/event-stream"
        resp = web.StreamResponse(status=200, headers=headers)
        await resp.prepare(request)
        try:
            if model.startswith("huge"):
                await self._write(resp, model, (b'{"choices": [{"message": {"content": "' + b"a" * (_PIECE - 40)), GiB)
            else:
                limit = FAST_TOKENS if model == "fast" else None
                size = 1024 if model == "fast" else 0  # what the caller gets is what is read
                i = 0
                while limit is None or i < limit:
                    await resp.write(_event(i, size))
                    self.sent[model] += 1
                    i += 1
                await resp.write(b"data: [DONE]\n\n")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.ended[model] += 1
        return resp

    async def _write(self, resp: web.StreamResponse, model: str, first: bytes, total: int) -> None:
        await resp.write(first)
        done = len(first)
        filler = b"a" * _PIECE
        while done < total:
            await resp.write(filler)
            done += len(filler)
            self.sent[model] = done
