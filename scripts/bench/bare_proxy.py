"""Floors for an HTTP front in Python: bare proxies on atomr's server stack, no atomr.

A raw ASGI app on uvicorn (httptools, uvloop: what atomr's front runs on) that forwards each
request to the backend and relays the answer. No validation, tenants, scheduling, retries,
metrics or logs. Two kinds (``--kind``):

- ``relay`` (the floor of any Python pass-through proxy): the body's bytes POSTed with one pooled
  aiohttp session, the answer's bytes relayed as they arrive (the backend's SSE chunks as they
  come), nothing parsed;
- ``sdk``: the call the `openai` runner makes on its SDK transport (the official SDK's generic
  `post` over its aiohttp client), the answer relayed as JSON, or as SSE events and
  ``data: [DONE]`` for a stream.

What a kind adds over calling the backend directly is what any front built that way pays on this
machine; what atomr's front adds beyond it is atomr's own share. Not for serving.

    python scripts/bench/bare_proxy.py --backend-port N [--kind relay|sdk] --port 0   # prints "port N"
"""

from __future__ import annotations

import argparse
import json
import socket
from typing import Any

import uvicorn
import uvloop
from fake_openai_backend import read_body  # this folder: the script's own (first on sys.path)


def relay_app(backend_port: int) -> Any:
    import aiohttp

    base = f"http://127.0.0.1:{backend_port}"
    session: aiohttp.ClientSession | None = None
    hop = {b"content-type", b"authorization"}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] != "http":
            return
        if session is None:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
        body = await read_body(receive)
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in hop}
        async with session.post(base + scope["path"], data=body, headers=headers) as r:
            ctype = r.headers.get("content-type", "application/json").encode()
            await send({"type": "http.response.start", "status": r.status, "headers": [(b"content-type", ctype)]})
            async for piece in r.content.iter_any():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def sdk_app(backend_port: int) -> Any:
    from atomr.runners.remote.openai.runner import OpenAIRunner

    from atomr.core.deployment import Deployment

    runner = OpenAIRunner(
        Deployment(
            name="gpt",
            model="openai/fake",
            runtime="openai",
            engine={"api_base": f"http://127.0.0.1:{backend_port}/v1", "transport": "sdk"},
        )
    )
    loaded = False

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal loaded
        if scope["type"] != "http":
            return
        if not loaded:
            await runner.load()
            loaded = True
        body = json.loads(await read_body(receive))
        path = "/chat/completions" if scope["path"].endswith("/chat/completions") else "/completions"
        transport = runner.client
        if not body.get("stream"):
            answer = await transport.post(path, body, None)
            data = json.dumps(answer, separators=(",", ":")).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        async with transport.stream(path, body, None) as reply:
            async for event in reply.events:
                line = b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
                await send({"type": "http.response.body", "body": line, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend-port", type=int, required=True)
    ap.add_argument("--kind", choices=("relay", "sdk"), default="relay")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY on accept
    sock.bind(("127.0.0.1", args.port))
    print(f"port {sock.getsockname()[1]}", flush=True)
    app = relay_app(args.backend_port) if args.kind == "relay" else sdk_app(args.backend_port)
    config = uvicorn.Config(app, http="httptools", log_level="warning", access_log=False, lifespan="off")
    uvloop.run(uvicorn.Server(config).serve(sockets=[sock]))


if __name__ == "__main__":
    main()
