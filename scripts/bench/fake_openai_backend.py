"""A zero-delay OpenAI-compatible backend for benchmarks (raw ASGI on uvicorn, one process).

`POST /v1/chat/completions` and `/v1/completions` answer at once (or after `--delay-s`, an asyncio
sleep, so thousands of requests can wait at the same time): a short JSON completion, or
with ``"stream": true`` exactly `--chunks` SSE events (one word each), a usage event when asked,
and ``data: [DONE]``. It does as little as possible per request, so that what a benchmark measures
is the path in front of it. Not a test fake (see tests/fakes for the protocol-faithful ones).

    python scripts/bench/fake_openai_backend.py --port 0 [--chunks 20] [--delay-s 0]   # prints "port N"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from typing import Any

import uvicorn

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon")


async def read_body(receive: Any) -> bytes:
    """The whole body of an ASGI HTTP request."""
    raw = b""
    more = True
    while more:
        msg = await receive()
        raw += msg.get("body", b"")
        more = msg.get("more_body", False)
    return raw


def make_app(chunks: int, delay_s: float = 0.0) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        req = json.loads(await read_body(receive) or b"{}")
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        chat = scope["path"].endswith("/chat/completions")
        model = req.get("model", "fake")
        if not req.get("stream"):
            text = " ".join(WORDS)
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            body = {
                "id": "cmpl-fake",
                "object": "chat.completion" if chat else "text_completion",
                "created": 0,
                "model": model,
                "choices": [choice],
                "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
            }
            data = json.dumps(body).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        head = {
            "id": "cmpl-fake",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": 0,
            "model": model,
        }
        parts = []
        for i in range(chunks):
            word = WORDS[i % len(WORDS)] + " "
            last = i == chunks - 1
            if chat:
                choice = {"index": 0, "delta": {"content": word}, "finish_reason": "stop" if last else None}
            else:
                choice = {"index": 0, "text": word, "finish_reason": "stop" if last else None}
            parts.append(b"data: " + json.dumps({**head, "choices": [choice]}).encode() + b"\n\n")
        if (req.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": 5 + chunks}
            parts.append(b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode() + b"\n\n")
        parts.append(b"data: [DONE]\n\n")
        for part in parts:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--delay-s", type=float, default=0.0, help="wait this long before answering")
    args = ap.parse_args()
    # proto IPPROTO_TCP, so that asyncio sets TCP_NODELAY on accepted connections (with proto 0
    # it does not, and Nagle + delayed ACKs add ~40 ms to every keep-alive response)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", args.port))
    print(f"port {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        make_app(args.chunks, args.delay_s), log_level="warning", access_log=False, lifespan="off", backlog=4096
    )
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


if __name__ == "__main__":
    main()
