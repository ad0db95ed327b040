"""Fuzzing the HTTP front of a real node with schemathesis, from the OpenAPI document it serves.

A node with one tenant and the embedded tiny model serves ``/openapi.json``; schemathesis reads
it and sends every operation valid and invalid requests (examples, boundary values, random
bodies; a fixed seed and a bounded number per operation, so CI sees the same run every time).
Every response must be a declared status with a declared content type and match its schema, and
none may be a 5xx. Afterwards the node's processes are all alive, none restarted, its metrics
count no 5xx, and a plain request still gets its answer.

Apart from the node, bodies generated from the document (positive mode) are checked against the
wire parser: what the document calls valid, the server accepts.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

schemathesis = pytest.importorskip("schemathesis")

import requests  # noqa: E402  (schemathesis brings it)
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from atomr.core.tenants import new_key  # noqa: E402
from atomr.http import anthropic_messages, embeddings  # noqa: E402
from atomr.http.openai_requests import parse_chat, parse_completion  # noqa: E402
from atomr.http.openapi import openapi_document  # noqa: E402
from atomr.http.responses_api import protocol as responses_protocol  # noqa: E402
from tests.conftest import Node  # noqa: E402

KEY, KEY_HASH = new_key()
AUTH = {"Authorization": f"Bearer {KEY}"}
SEED = int(os.environ.get("ATOMR_FUZZ_SEED", "20240611"))  # fixed: CI sees the same run every time
MAX_EXAMPLES = int(os.environ.get("ATOMR_FUZZ_EXAMPLES", "40"))  # per operation and phase
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
SEEN: list[tuple[str, int]] = []  # (operation, status) of every fuzzed call


@pytest.fixture(scope="module")
def fuzz_front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, str, set[int]]]:
    cfg = tmp_path_factory.mktemp("fuzz") / "fuzz.yaml"
    cfg.write_text(
        f"""
http: {{port: 0, max_body_bytes: 65536, default_max_tokens: 8}}
tenants:
  - {{name: fuzz, key_sha256: {KEY_HASH}, max_concurrency: 64}}
deployments:
  - name: tiny
    model: builtin:tiny-llama
    limits: {{max_inflight_per_replica: 16}}
"""
    )
    node = Node(config=cfg)
    try:
        match = re.search(r"http front on (http://\S+)", node.output())
        assert match, node.output()
        base = match.group(1)
        deadline = time.time() + 60
        while requests.get(base + "/readyz", timeout=10).status_code != 200:
            assert time.time() < deadline, "the node never became ready"
            time.sleep(0.2)
        pids = {p.pid for p in [psutil.Process(node.proc.pid), *psutil.Process(node.proc.pid).children(recursive=True)]}
        yield node, base, pids
    finally:
        assert node.stop() == []


@pytest.fixture(scope="module")
def served_schema(fuzz_front: tuple[Node, str, set[int]]) -> Any:
    _, base, _ = fuzz_front
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "request-timeout": 60,
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},
        }
    )
    return schemathesis.openapi.from_url(base + "/openapi.json", config=config, timeout=30, headers=AUTH)


schema = schemathesis.pytest.from_fixture("served_schema")


@schema.parametrize()
def test_fuzzed_requests_get_declared_answers_and_no_5xx(case: Any) -> None:
    response = case.call_and_validate(headers=AUTH, checks=CHECKS)
    SEEN.append((case.operation.label, response.status_code))


def test_the_node_survives_the_fuzzing(fuzz_front: tuple[Node, str, set[int]]) -> None:
    node, base, pids = fuzz_front
    assert node.proc.poll() is None, node.output()[-4000:]
    alive = {p.pid for p in [psutil.Process(node.proc.pid), *psutil.Process(node.proc.pid).children(recursive=True)]}
    assert pids <= alive, f"processes that died: {sorted(pids - alive)}"  # every actor process is still there
    ok = requests.post(
        base + "/v1/chat/completions",
        headers=AUTH,
        json={"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4},
        timeout=60,
    )
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"], ok.text
    ready = requests.get(base + "/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["deployments"] == {"tiny": "ready"}
    metrics = requests.get(base + "/metrics", headers=AUTH, timeout=30).text
    five = [line for line in metrics.splitlines() if line.startswith("atomr_http_requests") and 'status="5' in line]
    assert all(float(line.rsplit(" ", 1)[1]) == 0 for line in five), five
    restarts = [line for line in metrics.splitlines() if line.startswith("atomr_replica_restarts_total")]
    assert all(float(line.rsplit(" ", 1)[1]) == 0 for line in restarts), restarts
    assert "http handler failed" not in node.output() and "Traceback" not in node.output()
    if SEEN:  # the fuzzing ran in this session: it reached the engine and was refused too
        statuses = {s for _, s in SEEN}
        assert 200 in statuses and any(400 <= s < 500 for s in statuses), sorted(statuses)
        assert not [s for s in statuses if s >= 500]


def _tool_names(path: str, body: dict[str, Any]) -> list[str]:
    tools = body.get("tools") or ()
    return [t["function"]["name"] if path.endswith("completions") else t["name"] for t in tools]


def _format_complete(fmt: dict[str, Any]) -> bool:
    """A response_format of type json_schema holds its json_schema, one of type regex its pattern
    (ResponseFormat's description says so; one OpenAPI 3.0 object cannot)."""
    wants = {"json_schema": "json_schema", "regex": "pattern"}.get(str(fmt.get("type")))
    return wants is None or fmt.get(wants) is not None


def _forced_tool(path: str, body: dict[str, Any]) -> str | None:
    """The tool a body's tool_choice names; "" for a choice that needs tools without naming one."""
    choice = body.get("tool_choice")
    if (
        choice is None
        or choice in ("none", "auto")
        or (isinstance(choice, dict) and choice["type"] in ("auto", "none"))
    ):
        return None
    if choice in ("required",) or choice["type"] == "any":
        return ""
    return str(choice["function"]["name"] if path.endswith("completions") else choice["name"])


@pytest.mark.parametrize(
    ("path", "parse"),
    [
        ("/v1/chat/completions", parse_chat),
        ("/v1/completions", parse_completion),
        ("/v1/messages", anthropic_messages.parse),
        ("/v1/messages/count_tokens", anthropic_messages.parse_count),
        ("/v1/responses", responses_protocol.parse),
        ("/v1/embeddings", embeddings.parse),
    ],
)
def test_what_the_document_calls_valid_the_parser_accepts(path: str, parse: Any) -> None:
    operation = schemathesis.openapi.from_dict(openapi_document(["tiny"]))[path]["POST"]

    @settings(max_examples=40, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy())
    def accepted(case: Any) -> None:
        body = case.body
        # what the document says in words only: top_logprobs needs logprobs, a forced tool choice
        # needs tools and names one of them, function names are unique, a response format holds
        # what its type needs
        tools = _tool_names(path, body)
        forced = _forced_tool(path, body)
        assume(not body.get("top_logprobs") or body.get("logprobs"))
        fmt = body.get("response_format") if path.endswith("completions") else None
        assume(not isinstance(fmt, dict) or _format_complete(fmt))
        assume(len(set(tools)) == len(tools))
        assume(forced is None or (tools and (forced == "" or forced in tools)))
        _, req = parse(json.dumps(body).encode(), 128)
        req.validate()

    accepted()


def test_the_document_is_valid_openapi() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    for auth in (True, False):
        validator.validate(openapi_document(["tiny", "gpt"], auth=auth))


def test_the_served_document_is_the_built_one(fuzz_front: tuple[Node, str, set[int]]) -> None:
    _, base, _ = fuzz_front
    assert requests.get(base + "/openapi.json", timeout=30).status_code == 401  # with tenants: a key
    served = requests.get(base + "/openapi.json", headers=AUTH, timeout=30)
    assert served.status_code == 200 and served.headers["content-type"].startswith("application/json")
    assert served.json() == json.loads(json.dumps(openapi_document(["tiny"], auth=True)))
    assert set(served.json()["paths"]) == {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/responses",
        "/v1/responses/{response_id}",
        "/v1/models",
        "/healthz",
        "/health",
        "/readyz",
        "/metrics",
        "/openapi.json",
    }


@pytest.mark.parametrize(
    "extra", [{"seed": 2**31}, {"seed": 2**63 - 1}, {"top_k": 2**31}], ids=["seed-2^31", "seed-2^63-1", "top_k-2^31"]
)
def test_valid_sampling_values_at_their_bounds_are_not_a_server_error(
    fuzz_front: tuple[Node, str, set[int]], extra: dict[str, int]
) -> None:
    _, base, _ = fuzz_front
    body: dict[str, Any] = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    r = requests.post(
        base + "/v1/chat/completions", headers=AUTH, json={**body, "temperature": 1.0, **extra}, timeout=60
    )
    assert r.status_code < 500, r.text
