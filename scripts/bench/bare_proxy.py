"""The floor for an HTTP front that uses the official openai SDK: a bare proxy, no atomr.

A raw ASGI app on uvicorn (httptools, uvloop: what atomr's front runs on) whose only work per
request is the call the `openai` runner makes: the SDK's generic `post` over its aiohttp transport
(the very client `OpenAIRunner.load()` builds), then the answer relayed as JSON, or as SSE events
and ``data: [DONE]`` for a stream. No validation, tenants, scheduling, retries, metrics or logs.
What this adds over calling the backend directly is what any front built on the SDK pays on this
machine; what atomr's front adds beyond it is atomr's own share. Not for serving.

    python scripts/bench/bare_proxy.py --backend-port N --port 0   # prints "port N"
"""

from __future__ import annotations

import argparse
import json
import socket
from typing import Any

import openai
import uvicorn
import uvloop
from atomr.runners.remote.openai.runner import OpenAIRunner
from fake_openai_backend import read_body  # this folder: the script's own (first on sys.path)

from atomr.core.deployment import Deployment


def make_app(backend_port: int) -> Any:
    runner = OpenAIRunner(
        Deployment(
            name="gpt",
            model="openai/fake",
            runtime="openai",
            engine={"api_base": f"http://127.0.0.1:{backend_port}/v1"},
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
        client = runner.client
        if not body.get("stream"):
            answer = await client.post(path, body=body, cast_to=object)
            data = json.dumps(answer, separators=(",", ":")).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            return
        events = await client.post(path, body=body, cast_to=object, stream=True, stream_cls=openai.AsyncStream[object])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        async with events:
            async for event in events:
                line = b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
                await send({"type": "http.response.body", "body": line, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend-port", type=int, required=True)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY on accept
    sock.bind(("127.0.0.1", args.port))
    print(f"port {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        make_app(args.backend_port), http="httptools", log_level="warning", access_log=False, lifespan="off"
    )
    uvloop.run(uvicorn.Server(config).serve(sockets=[sock]))


if __name__ == "__main__":
    main()
