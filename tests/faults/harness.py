"""Load, fault injection and invariants shared by the fault tests.

`Load` keeps several threads sending requests until it is stopped: streaming and whole answers
through one `atomr.Client`, and, when given the HTTP front's URL, SSE streams and JSON answers
through it. Every request's outcome is recorded as its caller saw it: the text, how many ends it
got (a last chunk or an error), its error kind, when it started, ended and had to end (deadline).

`Load.check` asserts the invariants of the suite:

* every request that was sent got exactly one end, and none ran past its deadline;
* a request that succeeded has exactly the expected text (greedy prompts with a known answer),
  so no chunk was lost or repeated; one that failed has a structured error of an allowed kind and
  shows a prefix of the expected text (a part never repeats);

`serves_again` measures how long after a fault a fresh request succeeds again, and
`process_gone` waits for a killed process to be gone (or a zombie).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from atomr.client import Client
from atomr.core.errors import InferenceError
from atomr.http.openai_wire import kind_of_code
from atomr.models import builtin_model_dir
from tests.conftest import Node

MODEL = builtin_model_dir("tiny-llama")
PROMPT = "Once upon a time"

KINDS = ("stream", "unary", "http-stream", "http-unary")
SLACK_S = 3.0  # how long past its deadline a request may take to end (the client's own timers)
RECOVERY_S = 15.0  # the system serves again within this long after a fault


@dataclass
class Outcome:
    kind: str
    started: float
    deadline: float
    ended: float = 0.0
    text: str = ""
    chunks: int = 0
    ends: int = 0  # ends the caller saw: must be exactly 1
    error: str | None = None  # the structured error's kind, "http-transport" or "unstructured: ..."
    detail: str = ""


@dataclass
class Summary:
    sent: int
    ok: int
    errors: Counter[str] = field(default_factory=Counter)
    texts: Counter[str] = field(default_factory=Counter)  # successful answers by text

    def __str__(self) -> str:
        return f"{self.sent} sent, {self.ok} ok, errors {dict(self.errors)}"


class Load:
    """Threads sending requests through the Client (and the HTTP front) until `stop()`."""

    def __init__(
        self,
        client: Client,
        model: str,
        prompt: str,
        expected: str | tuple[str, ...],
        max_tokens: int,
        *,
        kinds: tuple[str, ...] = ("stream", "unary"),
        workers: int = 6,
        http: str | None = None,
        timeout: float = 20.0,
        pause_s: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.client, self.model, self.prompt = client, model, prompt
        self.headers = dict(headers or {})  # sent with every HTTP request (a tenant's key)
        self.expected = (expected,) if isinstance(expected, str) else tuple(expected)  # any one of these
        self.max_tokens, self.kinds, self.http, self.timeout, self.pause_s = max_tokens, kinds, http, timeout, pause_s
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.first_chunk = threading.Event()  # some stream has shown text: a fault now lands mid-stream
        self.threads = [threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(workers)]
        for t in self.threads:
            t.start()

    # ---- workers ----

    def _worker(self, index: int) -> None:
        http = (
            httpx.Client(base_url=self.http, timeout=self.timeout + SLACK_S, headers=self.headers)
            if self.http
            else None
        )
        n = index
        try:
            while not self._stop.is_set():
                kind = self.kinds[n % len(self.kinds)]
                n += 1
                now = time.time()
                o = Outcome(kind, now, now + self.timeout)
                with self._lock:
                    self.outcomes.append(o)
                try:
                    if kind == "stream":
                        self._stream(o)
                    elif kind == "unary":
                        self._unary(o)
                    elif http is not None and kind == "http-stream":
                        self._http_stream(http, o)
                    elif http is not None and kind == "http-unary":
                        self._http_unary(http, o)
                except InferenceError as exc:
                    o.error, o.detail = exc.kind, exc.message
                    o.ends += 1
                except (httpx.TransportError, ConnectionError) as exc:
                    o.error, o.detail = "http-transport", f"{type(exc).__name__}: {exc}"
                    o.ends += 1
                except Exception as exc:  # noqa: BLE001 - recorded, and failed on in check()
                    o.error = f"unstructured: {type(exc).__name__}: {exc}"
                    o.ends += 1
                o.ended = time.time()
                if self.pause_s:
                    time.sleep(self.pause_s)
        finally:
            if http is not None:
                http.close()

    def _stream(self, o: Outcome) -> None:
        chunks = self.client.stream(self.model, prompt=self.prompt, max_tokens=self.max_tokens, timeout=self.timeout)
        for chunk in chunks:
            o.chunks += 1
            o.text += chunk.text
            if chunk.text:
                self.first_chunk.set()
        o.ends += 1

    def _unary(self, o: Outcome) -> None:
        result = self.client.generate(self.model, prompt=self.prompt, max_tokens=self.max_tokens, timeout=self.timeout)
        o.text = result.text
        o.ends += 1

    def _body(self, stream: bool) -> dict[str, Any]:
        return {"model": self.model, "prompt": self.prompt, "max_tokens": self.max_tokens, "stream": stream}

    def _http_stream(self, http: httpx.Client, o: Outcome) -> None:
        with http.stream("POST", "/v1/completions", json=self._body(True)) as r:
            if r.status_code != 200:
                r.read()
                _http_error(o, r.status_code, r.content)
                return
            for event in sse_events(r.iter_lines()):
                if event == "[DONE]":
                    o.ends += 1
                    continue
                data = json.loads(event)
                if "error" in data:
                    o.error = kind_of_code(str(data["error"].get("code") or data["error"].get("type")))
                    o.detail = str(data["error"].get("message"))
                    o.ends += 1
                    continue
                for choice in data.get("choices", []):
                    if choice.get("text"):
                        o.chunks += 1
                        o.text += choice["text"]
                        self.first_chunk.set()

    def _http_unary(self, http: httpx.Client, o: Outcome) -> None:
        r = http.post("/v1/completions", json=self._body(False))
        if r.status_code != 200:
            _http_error(o, r.status_code, r.content)
            return
        o.text = r.json()["choices"][0]["text"]
        o.ends += 1

    # ---- control and checks ----

    def stop(self, timeout: float | None = None) -> None:
        """Stop sending; wait for every request in flight to end (fails if one hangs)."""
        self._stop.set()
        limit = time.monotonic() + (timeout if timeout is not None else self.timeout + 2 * SLACK_S)
        for t in self.threads:
            t.join(max(0.0, limit - time.monotonic()))
        hung = [o for o in self.outcomes if not o.ended]
        assert not hung, f"{len(hung)} request(s) never ended: {hung[:3]}"

    def count(self, started_after: float = 0.0) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o.started >= started_after and o.ended)

    def wait_for(self, n: int, timeout: float = 30.0, started_after: float = 0.0) -> None:
        """Wait until `n` requests (started after the given time) have ended."""
        deadline = time.monotonic() + timeout
        while self.count(started_after) < n:
            assert time.monotonic() < deadline, f"only {self.count(started_after)} of {n} requests ended in time"
            time.sleep(0.05)

    def check(self, allowed: set[str] = frozenset(), *, before: float | None = None) -> Summary:  # type: ignore[assignment]
        """Assert the invariants over every recorded request; errors must be of `allowed` kinds.

        With `before`, requests that started at or after that time must all have succeeded.
        """
        summary = Summary(len(self.outcomes), 0)
        for o in self.outcomes:
            assert o.ends == 1, f"{o.kind} request got {o.ends} ends: {o}"
            late = o.ended - o.deadline
            assert late <= SLACK_S, f"{o.kind} request ended {late:.1f} s past its deadline: {o}"
            if o.error is None:
                assert o.text in self.expected, f"{o.kind} request answered other text: {o.text!r}"
                summary.ok += 1
                summary.texts[o.text] += 1
                continue
            summary.errors[o.error] += 1
            prefix = any(e.startswith(o.text) for e in self.expected)
            assert prefix, f"{o.kind} request showed text that is no prefix of an answer: {o.text!r}"
            late = before is not None and o.started >= before
            assert o.error in allowed and not late, f"{o.kind} request failed ({o.error}: {o.detail}); {summary}"
        return summary


def write_config(path: Path, *deployments: dict[str, Any], **sections: Any) -> Path:
    """A node config holding `deployments` and other top-level sections (http, tenants, ...)."""
    path.write_text(yaml.safe_dump({**sections, "deployments": list(deployments)}))
    return path


def tiny(name: str, **fields: Any) -> dict[str, Any]:
    """A deployment of the embedded tiny model (ONNX Runtime GenAI, one thread)."""
    return {"name": name, "model": "builtin:tiny-llama", "engine": {"intra_op_threads": 1}, **fields}


def http_url(node: Node) -> str:
    """The HTTP front's base URL, as the head printed it."""
    match = re.search(r"http front on (http://\S+)", node.output())
    assert match, node.output()
    return match.group(1)


def http_completion(node: Node, model: str, timeout: float = 3.0) -> None:
    """One short completion through the node's HTTP front; raises unless it answers 200."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": 8}
    httpx.post(http_url(node) + "/v1/completions", json=body, timeout=timeout).raise_for_status()


def deployment(client: Client, name: str) -> Any:
    """The named deployment's status (DeploymentInfo)."""
    return next(d for d in client.status()["deployments"] if d.name == name)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> float:
    """Seconds until `predicate()` is true; fails naming `what` after `timeout`."""
    start = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except InferenceError:
            pass  # an admin answer failed during the fault: ask again
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout:g} s"
        time.sleep(step)


def sse_events(lines: Iterator[str]) -> Iterator[str]:
    """The data of each server-sent event (one `data:` line each, as the HTTP front writes them)."""
    for line in lines:
        if line.startswith("data:"):
            yield line[5:].strip()


def _http_error(o: Outcome, status: int, content: bytes) -> None:
    try:
        err = json.loads(content)["error"]
        o.error = kind_of_code(str(err.get("code") or err.get("type")))
        o.detail = f"{status}: {err.get('message')}"
    except (ValueError, KeyError, TypeError):
        o.error, o.detail = f"unstructured: HTTP {status}", content[:200].decode(errors="replace")
    o.ends += 1


def serves_again(attempt: Callable[[], Any], since: float, within: float = RECOVERY_S) -> float:
    """Seconds from `since` (time.time()) until `attempt()` first returns without raising."""
    last: BaseException | None = None
    while time.time() - since < within:
        try:
            attempt()
            return time.time() - since
        except Exception as exc:  # noqa: BLE001 - any failure means: not yet
            last = exc
            time.sleep(0.1)
    raise AssertionError(f"not serving again within {within:g} s of the fault; last error: {last!r}")


def process_gone(pid: int, timeout: float = 10.0) -> bool:
    """True once `pid` has exited (or is a zombie) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False
