"""OpenTelemetry traces on a real node, received by a real OTLP/HTTP receiver (`tests/fakes/otlp_receiver.py`).

- a request to the embedded local model over HTTP is one trace over three processes (the front's
  gateway, the coordinator, the runner host), the child of the caller's ``traceparent``, with
  GenAI attributes (operation, models, provider, usage) and the trace id in its JSON log line;
- a remote deployment served in the gateway (`atomr.http.inline`) has the provider call as a
  CLIENT span in the front's process; with ``serve_in_gateway: false`` the CLIENT span is in the
  runner host, under the coordinator's;
- a stream without ``traceparent`` starts a trace at the front; a `Client` request one at the
  coordinator; a caller's unsampled trace exports nothing;
- the ``tracing:`` section is validated naming the setting, a node with it and without the
  packages stops with a config error, and with tracing off nothing of OpenTelemetry is imported.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import yaml

pytest.importorskip("opentelemetry.sdk")

from atomr.client import Client
from atomr.cluster.system import free_port, processes_on_port
from atomr.core.errors import ConfigError
from atomr.observability.tracing import tracing_settings_from_config
from tests.conftest import REPO, Node, node_env
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.otlp_receiver import OTLPReceiver, ReceivedSpan

KEY = "sk-tracing-" + "t" * 24
CHAT = [{"role": "user", "content": "What is an actor?"}]


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def front(
    tmp_path_factory: pytest.TempPathFactory, receiver: OTLPReceiver, provider: FakeOpenAI
) -> Iterator[tuple[Node, str, int]]:
    folder = tmp_path_factory.mktemp("tracing")
    (folder / "key").write_text(KEY)
    remote = {"api_base": provider.url + "/v1", "api_key_file": str(folder / "key"), "retry": {"max_attempts": 1}}
    cfg = folder / "traced.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "http": {"port": 0},
                "tracing": {"otlp_endpoint": receiver.url, "service_name": "atomr-test", "schedule_delay_ms": 50},
                "deployments": [
                    {"name": "tiny", "model": "builtin:tiny-llama", "engine": {"intra_op_threads": 1}},
                    {"name": "gpt", "model": "openai/gpt-fake", "engine": remote},
                    {"name": "gpt-replica", "model": "openai/gpt-fake", "engine": remote, "serve_in_gateway": False},
                ],
            }
        )
    )
    node = Node(config=cfg)
    match = re.search(r"http front on (http://\S+)", node.output())
    assert match, node.output()
    url = match.group(1)
    (gateway,) = processes_on_port(int(url.rsplit(":", 1)[1].strip("/")))
    try:
        yield node, url, gateway.pid
    finally:
        assert node.stop() == []


def new_parent(sampled: bool = True) -> tuple[str, str, str]:
    """A caller's (traceparent, trace id, span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def chat(base: str, model: str, traceparent: str | None = None, **extra: Any) -> httpx.Response:
    headers = {"traceparent": traceparent, "tracestate": "caller=1"} if traceparent else {}
    body = {"model": model, "messages": CHAT, "max_tokens": 16, **extra}
    r = httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return r


def named(*prefixes: str) -> Callable[[list[ReceivedSpan]], bool]:
    """Done once a span whose name starts with each prefix has arrived."""
    return lambda spans: all(any(s.name.startswith(p) for s in spans) for p in prefixes)


def one(spans: list[ReceivedSpan], prefix: str) -> ReceivedSpan:
    (span,) = [s for s in spans if s.name.startswith(prefix)]
    return span


def log_line(node: Node, request_id: str) -> dict[str, Any]:
    """The request's JSON log line (written before its last span ended, so already there)."""
    for line in node.output().splitlines():
        if '"event": "request"' in line and request_id in line:
            rec: dict[str, Any] = json.loads(line)
            if rec.get("request_id") == request_id:
                return rec
    raise AssertionError(f"no log line for {request_id}")


def test_a_local_model_request_is_one_trace_over_three_processes(
    front: tuple[Node, str, int], receiver: OTLPReceiver
) -> None:
    node, base, gateway_pid = front
    traceparent, trace_id, caller_span = new_parent()
    r = chat(base, "tiny", traceparent)
    usage = r.json()["usage"]
    spans = receiver.wait_trace(trace_id, named("POST /v1/chat/completions", "dispatch tiny", "chat "))
    server = one(spans, "POST /v1/chat/completions")
    dispatch = one(spans, "dispatch tiny")
    inference = one(spans, "chat ")
    assert len(spans) == 3, spans
    # one chain: the caller -> the front -> the coordinator -> the runner host
    assert server.kind == "server" and server.parent_span_id == caller_span
    assert server.trace_state == "caller=1"  # the caller's tracestate, kept on the front's span
    assert dispatch.kind == "internal" and dispatch.parent_span_id == server.span_id
    assert inference.kind == "internal" and inference.parent_span_id == dispatch.span_id
    pids = {server.pid, dispatch.pid, inference.pid}
    assert len(pids) == 3 and server.pid == gateway_pid
    assert pids <= {p.pid for p in node.processes()}
    assert all(s.resource["service.name"] == "atomr-test" for s in spans)
    assert server.attributes["gen_ai.operation.name"] == "chat"
    assert server.attributes["gen_ai.request.model"] == "tiny"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/v1/chat/completions"
    request_id = server.attributes["atomr.request_id"]
    assert r.headers["x-request-id"] == request_id
    a = inference.attributes
    assert inference.name == "chat builtin:tiny-llama"
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "builtin:tiny-llama"
    assert a["gen_ai.response.model"] == "builtin:tiny-llama"
    assert a["gen_ai.provider.name"] == a["gen_ai.system"] == "onnxruntime_genai"
    assert a["gen_ai.request.max_tokens"] == 16
    assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert a["gen_ai.response.finish_reasons"] == (r.json()["choices"][0]["finish_reason"],)
    assert a["atomr.deployment"] == "tiny" and a["atomr.request_id"] == request_id
    assert dispatch.attributes["atomr.outcome"] == "ok" and dispatch.attributes["atomr.replica"]
    assert dispatch.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert all(s.status_code != 2 for s in spans)
    rec = log_line(node, request_id)
    assert rec["trace_id"] == trace_id and rec["deployment"] == "tiny"


def test_a_remote_call_in_the_gateway_is_a_client_span_of_the_front(
    front: tuple[Node, str, int], receiver: OTLPReceiver, provider: FakeOpenAI
) -> None:
    node, base, gateway_pid = front
    traceparent, trace_id, caller_span = new_parent()
    r = chat(base, "gpt", traceparent, temperature=0.5)
    assert r.json()["choices"][0]["message"]["content"] == provider.reply_text
    spans = receiver.wait_trace(trace_id, named("POST /v1/chat/completions", "chat gpt-fake"))
    server, call = one(spans, "POST "), one(spans, "chat gpt-fake")
    assert server.parent_span_id == caller_span and call.parent_span_id == server.span_id
    assert call.kind == "client" and call.pid == server.pid == gateway_pid  # served in the front's process
    a = call.attributes
    assert a["atomr.replica"] == f"gateway-{gateway_pid}"
    assert a["gen_ai.provider.name"] == "openai" and a["gen_ai.request.model"] == "gpt-fake"
    assert a["gen_ai.request.temperature"] == 0.5
    assert a["server.address"] == "127.0.0.1" and a["server.port"] == int(provider.url.rsplit(":", 1)[1])
    assert a["gen_ai.usage.input_tokens"] == r.json()["usage"]["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == r.json()["usage"]["completion_tokens"]
    assert log_line(node, server.attributes["atomr.request_id"])["trace_id"] == trace_id


def test_a_remote_call_on_a_replica_is_a_client_span_in_the_runner_host(
    front: tuple[Node, str, int], receiver: OTLPReceiver
) -> None:
    _, base, gateway_pid = front
    traceparent, trace_id, caller_span = new_parent()
    r = chat(base, "gpt-replica", traceparent)
    spans = receiver.wait_trace(trace_id, named("POST ", "dispatch gpt-replica", "chat gpt-fake"))
    server, dispatch, call = one(spans, "POST "), one(spans, "dispatch "), one(spans, "chat gpt-fake")
    assert server.parent_span_id == caller_span
    assert dispatch.parent_span_id == server.span_id and call.parent_span_id == dispatch.span_id
    assert call.kind == "client" and len({server.pid, dispatch.pid, call.pid}) == 3 and server.pid == gateway_pid
    assert call.attributes["gen_ai.usage.output_tokens"] == r.json()["usage"]["completion_tokens"]


def test_a_stream_without_traceparent_starts_its_trace_at_the_front(
    front: tuple[Node, str, int], receiver: OTLPReceiver
) -> None:
    _, base, _ = front
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 16, "stream": True}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        text = "".join(r.iter_text())
    assert text.rstrip().endswith("data: [DONE]")

    def mine(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in spans if s.attributes.get("atomr.request_id") == request_id]

    spans = mine(receiver.wait_for(lambda spans: named("POST ", "dispatch ", "chat ")(mine(spans))))
    server = one(spans, "POST ")
    assert server.parent_span_id == ""
    assert one(spans, "dispatch ").attributes["atomr.tenant"] == "default"
    assert {s.trace_id for s in spans} == {server.trace_id}
    assert one(spans, "chat ").attributes["gen_ai.usage.output_tokens"] > 0


def test_a_client_request_starts_its_trace_at_the_coordinator(
    front: tuple[Node, str, int], receiver: OTLPReceiver
) -> None:
    node, _, _ = front
    with Client(node.address) as client:
        result = client.generate("tiny", CHAT, max_tokens=8)

    def mine(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in spans if s.attributes.get("atomr.request_id") == result.request_id]

    spans = mine(receiver.wait_for(lambda spans: named("dispatch tiny", "chat ")(mine(spans))))
    dispatch, inference = one(spans, "dispatch tiny"), one(spans, "chat ")
    assert dispatch.parent_span_id == "" and inference.parent_span_id == dispatch.span_id
    assert inference.attributes["gen_ai.usage.output_tokens"] == result.usage.completion_tokens
    assert log_line(node, result.request_id)["trace_id"] == dispatch.trace_id


def test_a_callers_unsampled_trace_exports_nothing(front: tuple[Node, str, int], receiver: OTLPReceiver) -> None:
    node, base, _ = front
    unsampled, dropped_trace, _ = new_parent(sampled=False)
    skipped = chat(base, "tiny", unsampled)
    # A sampled request after it, through the same three processes: once its spans are here,
    # any span of the first would have been too (each process exports its spans in order).
    sampled, trace_id, _ = new_parent()
    chat(base, "tiny", sampled)
    receiver.wait_trace(trace_id, named("POST ", "dispatch tiny", "chat "))
    assert receiver.trace(dropped_trace) == []
    assert log_line(node, skipped.headers["x-request-id"])["trace_id"] == dropped_trace


# ---- configuration and the off state (no node running) -------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"otlp_endpoint": "http://127.0.0.1:4318/v1/traces", "sample_ratioo": 1}, "tracing.sample_ratioo"),
        ({}, "tracing.otlp_endpoint"),
        ({"otlp_endpoint": "127.0.0.1:4318"}, "tracing.otlp_endpoint"),
        ({"otlp_endpoint": "http://127.0.0.1:4318/v1/traces", "sample_ratio": 2}, "tracing.sample_ratio"),
        ("on", "tracing"),
    ],
)
def test_bad_settings_are_refused_naming_them(raw: Any, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        tracing_settings_from_config(raw, "node.yaml")
    assert err.value.field == field and field in err.value.message


def test_settings_defaults_and_switched_off() -> None:
    assert tracing_settings_from_config(None) is None
    url = "http://127.0.0.1:4318/v1/traces"
    assert tracing_settings_from_config({"otlp_endpoint": url, "enabled": False}) is None
    s = tracing_settings_from_config({"otlp_endpoint": url})
    assert s is not None and s.service_name == "atomr" and s.sample_ratio == 1.0


BLOCK_OTEL = "import sys; sys.modules['opentelemetry'] = None; "


def test_a_node_with_tracing_but_without_the_packages_stops_naming_the_option(tmp_path: Any) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({"tracing": {"otlp_endpoint": "http://127.0.0.1:4318/v1/traces"}}))
    code = BLOCK_OTEL + "from atomr.node.main import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "--config", str(cfg), "--port", str(free_port())],
        cwd=REPO,
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "tracing" in proc.stderr and "pip install 'atomr[tracing]'" in proc.stderr, proc.stderr


def test_off_nothing_of_opentelemetry_is_imported() -> None:
    check = (
        "import atomr.actors.coordinator, atomr.actors.runner_host, atomr.actors.gateway, atomr.node.main\n"
        "from atomr.observability import tracing\n"
        "assert not tracing.enabled() and tracing.request_spans() is None\n"
        "assert tracing.http_span({}, '/v1/chat/completions') is None\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry') and sys.modules[m] is not None]\n"
    )
    env = {k: v for k, v in node_env().items() if k != "ATOMR_TRACING"}
    for prefix in ("import sys; ", BLOCK_OTEL):  # installed, and not installed at all
        proc = subprocess.run(
            [sys.executable, "-c", prefix + "\n" + check],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr


def test_settings_reach_every_process_through_the_environment() -> None:
    # what the node's processes read: the JSON the node process put in $ATOMR_TRACING
    url = "http://127.0.0.1:4318/v1/traces"
    s = tracing_settings_from_config({"otlp_endpoint": url, "sample_ratio": 0.25})
    assert s is not None
    code = "from atomr.observability import tracing; s = tracing.settings(); print(s.otlp_endpoint, s.sample_ratio)"
    env = {**os.environ, "ATOMR_TRACING": s.model_dump_json()}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == [url, "0.25"], out.stderr
