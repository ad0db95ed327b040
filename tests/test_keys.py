"""Keys made at runtime, money budgets and the spend log, through a real head.

One head with an admin key, an HTTP front of two worker processes, an `openai` deployment on the
fake OpenAI server with known prices (every token costs 0.001 USD; "Hello?" with max_tokens 8 is
1 prompt and 8 completion tokens, 0.009 USD, estimated before the call at 0.010), a deployment
that always fails retryably and falls back to it, the embedded tiny model and a cascade of the
two:
- a key's life through `atomr-keys` and `/admin/keys`: create, use, revoke (refused on both worker
  processes within 1 s), rotate (the old secret stops working); the admin API needs the admin key;
  keys from the YAML tenants keep working;
- a budget stops its key after exactly budget / cost requests, and with requests held in flight
  at the provider none overruns it by more than one request's estimate; a short period resets it;
- the spend log's sums equal the /metrics totals after a mixed run with fallbacks and a cascade.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from atomr.client import Client
from atomr.cluster.system import system_processes
from atomr.core.tenants import new_key
from tests.conftest import REPO, Node, node_env
from tests.fakes.openai_server import FakeOpenAI
from tests.faults.harness import http_url, process_gone, wait_until
from tests.worker_conns import listeners, one_on_each

ADMIN_KEY = "atomr-admin-" + "a" * 32
PROVIDER_KEY = "sk-provider-" + "k" * 32
YAML_KEY, YAML_HASH = new_key()
CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "Hello?"}], "max_tokens": 8}
COST_USD = 0.009  # 1 prompt + 8 completion tokens at 0.001 USD each
PRICES = {"prompt": 1000.0, "completion": 1000.0}  # USD per million tokens


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=PROVIDER_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory, provider: FakeOpenAI) -> Iterator[tuple[Node, str, Path]]:
    folder = tmp_path_factory.mktemp("keys")
    (folder / "provider.key").write_text(PROVIDER_KEY)
    admin = folder / "admin.key"
    admin.write_text(ADMIN_KEY + "\n")
    remote = {
        "api_base": provider.url + "/v1",
        "api_key_file": str(folder / "provider.key"),
        "retry": {"max_attempts": 1},
    }
    dead = {**remote, "api_base": "http://127.0.0.1:9/v1"}  # nothing listens there: unavailable, retryable
    cfg = folder / "keys.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "http": {"port": 0, "workers": 2, "admin_key_file": "admin.key"},
                "tenants": [{"name": "team-yaml", "key_sha256": YAML_HASH, "models": ["gpt"]}],
                "deployments": [
                    {"name": "gpt", "model": "openai/gpt-fake", "engine": remote, "cost": PRICES},
                    {"name": "flaky", "model": "openai/gpt-fake", "engine": dead, "fallbacks": ["gpt"], "cost": PRICES},
                    {
                        "name": "tiny",
                        "model": "builtin:tiny-llama",
                        "engine": {"intra_op_threads": 1},
                        "cost": {"prompt": 10.0, "completion": 20.0},
                    },
                ],
                "cascades": [
                    {"name": "smart", "tiers": [{"deployment": "tiny", "threshold": 0.0}, {"deployment": "gpt"}]}
                ],
            }
        )
    )
    node = Node(config=cfg)
    try:
        yield node, http_url(node), admin
    finally:
        assert node.stop() == []


def keys_cli(node: Node, admin: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "atomr-keys"), "--address", node.address, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=node_env(ATOMR_ADMIN_KEY_FILE=str(admin)),
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def admin_call(url: str, method: str, path: str, body: Any = None, key: str | None = ADMIN_KEY) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.request(method, url + path, json=body, headers=headers, timeout=30)


def make_key(url: str, **fields: Any) -> tuple[str, str]:
    made = admin_call(url, "POST", "/admin/keys", {"tenant": "team-b", **fields})
    assert made.status_code == 201, made.text
    return made.json()["key"]["id"], made.json()["secret"]


def chat(url: str, key: str, **changes: Any) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions", json={**CHAT, **changes}, headers={"authorization": f"Bearer {key}"}, timeout=60
    )


def test_the_admin_api_needs_the_admin_key_and_names_bad_fields(head: tuple[Node, str, Path]) -> None:
    _, url, _ = head
    assert admin_call(url, "GET", "/admin/keys", key=None).status_code == 401
    assert admin_call(url, "GET", "/admin/keys", key="atomr-not-the-admin-key-000000").status_code == 401
    assert admin_call(url, "GET", "/admin/spend", key=YAML_KEY).status_code == 401  # a tenant's key is no admin key
    bad = admin_call(url, "POST", "/admin/keys", {"tenant": "team-b", "budget_usd": -1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "budget_usd", bad.text
    bad = admin_call(url, "POST", "/admin/keys", {"tenant": "team-b", "period": "fortnight"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "period", bad.text
    bad = admin_call(url, "POST", "/admin/keys", {"tenant": "team-b", "colour": "blue"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "colour", bad.text
    assert admin_call(url, "GET", "/admin/keys/key_0000").status_code == 404
    doc = httpx.get(url + "/openapi.json", headers={"authorization": f"Bearer {YAML_KEY}"}, timeout=30).json()
    validate(doc)
    assert {"/admin/keys", "/admin/keys/{key_id}/rotate", "/admin/spend"} <= set(doc["paths"])
    assert doc["paths"]["/admin/keys"]["post"]["security"] == [{"admin": []}]


def test_a_keys_life_through_the_cli_and_the_admin_api(head: tuple[Node, str, Path]) -> None:
    node, url, admin = head
    made = keys_cli(node, admin, "create", "--tenant", "team-b", "--models", "gpt", "--metadata", "owner=ops")
    secret = made.stdout.strip()
    key_id = made.stderr.split(":", 1)[0].strip()
    assert secret.startswith("atomr-") and key_id.startswith("key_"), (made.stdout, made.stderr)
    listed = keys_cli(node, admin, "list").stdout.splitlines()
    assert any(line.startswith(key_id + " ") and "team-b" in line for line in listed), listed
    # used through the official SDK, and on each worker process of the front
    sdk = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
    assert sdk.chat.completions.create(**CHAT).choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):  # the key names its models
        sdk.chat.completions.create(**{**CHAT, "model": "tiny"})
    port = int(url.rsplit(":", 1)[1])
    conns = [cs[0] for cs in one_on_each(port, listeners(node, port), secret).values()]
    assert [c.call("POST", "/v1/chat/completions", CHAT)[0] for c in conns] == [200, 200]
    # revoked through the admin API: refused on both worker processes within 1 s
    revoked = admin_call(url, "DELETE", f"/admin/keys/{key_id}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"], revoked.text
    gone_after = time.monotonic()
    for c in conns:
        wait_until(
            lambda c=c: c.call("POST", "/v1/chat/completions", CHAT)[0] == 401,
            1.0 - (time.monotonic() - gone_after),
            "revoked",
        )
        c.close()
    with pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(**CHAT)
    # rotated through the CLI: a new secret, and the old one stops working
    key2, old = make_key(url, models=["gpt"])
    assert chat(url, old).status_code == 200
    new = keys_cli(node, admin, "rotate", key2).stdout.strip()
    assert new != old and new.startswith("atomr-")
    wait_until(lambda: chat(url, old).status_code == 401, 5, "the old secret refused")
    assert chat(url, new).status_code == 200
    shown = json.loads(keys_cli(node, admin, "--json", "show", key2).stdout)
    assert shown["id"] == key2 and shown["revoked_at"] is None and "secret" not in shown and "key_sha256" not in shown
    # the config's tenants keep working beside runtime keys
    assert chat(url, YAML_KEY).status_code == 200
    assert chat(url, "atomr-never-made-" + "x" * 30).status_code == 401


def test_an_expired_key_and_a_keys_own_limits_are_refused(head: tuple[Node, str, Path], provider: FakeOpenAI) -> None:
    _, url, _ = head
    _, expired = make_key(url, expires_at=time.time() - 1)
    refused = chat(url, expired)
    assert refused.status_code == 401 and "expired" in refused.json()["error"]["message"]
    _, limited = make_key(url, rpm=2)
    assert [chat(url, limited).status_code for _ in range(3)] == [200, 200, 429]
    _, single = make_key(url, max_parallel=1)
    provider.hold()
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(chat, url, single)
            assert provider.wait_held(1)
            second = chat(url, single)
            assert second.status_code == 429 and "max_parallel" in second.json()["error"]["message"], second.text
            provider.release()
            assert first.result(60).status_code == 200
    finally:
        provider.release()
    # its place is given back when the run's record reaches the key keeper, just after the answer
    # (the next request may reach it first through the other worker process)
    wait_until(lambda: chat(url, single).status_code == 200, 10, "the key's place given back")


def test_a_budget_stops_its_key_after_exactly_the_right_number_of_requests(head: tuple[Node, str, Path]) -> None:
    _, url, _ = head
    key_id, secret = make_key(url, budget_usd=0.05, period="month")
    codes = []
    for _ in range(10):
        codes.append(chat(url, secret).status_code)
        if codes[-1] != 200:
            break
    # admitted while less than the budget is spent: 6 x 0.009 = 0.054 (the 6th starts at 0.045)
    assert codes == [200] * 6 + [429], codes
    refused = chat(url, secret)
    body = refused.json()["error"]
    assert refused.status_code == 429 and body["code"] == "budget_exceeded", refused.text
    assert int(refused.headers["retry-after"]) > 0  # until the month ends
    shown = admin_call(url, "GET", f"/admin/keys/{key_id}").json()
    assert shown["spent_usd"] == pytest.approx(6 * COST_USD) and shown["inflight"] == 0


def test_concurrent_requests_do_not_overrun_a_budget(head: tuple[Node, str, Path], provider: FakeOpenAI) -> None:
    _, url, _ = head
    key_id, secret = make_key(url, budget_usd=0.05, period="month")
    provider.hold()
    try:
        with ThreadPoolExecutor(12) as pool:
            calls = [pool.submit(chat, url, secret) for _ in range(12)]
            # each holds its estimate (0.010) while the provider holds it: 5 fit under 0.05
            assert provider.wait_held(5)
            refused = [f for f in calls if f.done()]
            wait_until(lambda: sum(f.done() for f in calls) == 7, 60, "7 refused while 5 are held")
            refused = [f.result() for f in calls if f.done()]
            assert all(r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded" for r in refused)
            provider.release()
            codes = sorted(f.result(60).status_code for f in calls)
    finally:
        provider.release()
    assert codes == [200] * 5 + [429] * 7
    # 0.045 spent: one more fits, then none; never over by more than one estimate
    assert [chat(url, secret).status_code for _ in range(2)] == [200, 429]
    spent = admin_call(url, "GET", f"/admin/keys/{key_id}").json()["spent_usd"]
    assert spent == pytest.approx(6 * COST_USD) and spent <= 0.05 + 0.010


def test_a_budget_resets_with_its_period(head: tuple[Node, str, Path]) -> None:
    _, url, _ = head
    key_id, secret = make_key(url, budget_usd=0.005, period="8s")
    assert chat(url, secret).status_code == 200
    refused = chat(url, secret)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded", refused.text
    assert 1 <= int(refused.headers["retry-after"]) <= 8
    wait_until(lambda: chat(url, secret).status_code == 200, 40, "the key served again in its next period")
    assert admin_call(url, "GET", f"/admin/keys/{key_id}").json()["spent_usd"] == pytest.approx(COST_USD)


def spend_metrics(url: str) -> dict[tuple[str, str], float]:
    text = httpx.get(url + "/metrics", headers={"authorization": f"Bearer {YAML_KEY}"}, timeout=30).text
    totals: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "atomr_spend_usd_total":
                where = (s.labels["deployment"], s.labels["tenant"])
                totals[where] = totals.get(where, 0.0) + s.value
    return totals


def test_spend_log_totals_equal_the_metrics_after_fallbacks_and_a_cascade(head: tuple[Node, str, Path]) -> None:
    node, url, admin = head
    _, secret = make_key(url, models=["gpt", "flaky", "smart", "tiny"])
    before_log = {
        (r["deployment"]): r for r in admin_call(url, "GET", "/admin/spend?group_by=deployment").json()["data"]
    }
    for model in ("gpt", "flaky", "smart", "tiny", "flaky", "smart"):
        answer = chat(url, secret, model=model)
        assert answer.status_code == 200, (model, answer.text)
    with Client(node.address) as client:  # the actor path's requests are logged too (tenant "default")
        client.generate("tiny", "Once upon a time", max_tokens=8)
        client.generate("flaky", "Once upon a time", max_tokens=8)

    def log_by_deployment() -> dict[str, dict[str, Any]]:
        rows = admin_call(url, "GET", "/admin/spend?group_by=deployment").json()["data"]
        return {r["deployment"]: r for r in rows}

    def added(rows: dict[str, dict[str, Any]]) -> dict[str, int]:
        return {d: r["requests"] - (before_log[d]["requests"] if d in before_log else 0) for d, r in rows.items()}

    # gpt: 1 + 2 flaky fallbacks + 1 client fallback (+ cascade escalations); flaky: 3 failed runs
    wait_until(lambda: added(log_by_deployment()).get("flaky") == 3, 30, "the spend log's rows")
    metrics_total = {}
    log_total = {}

    def settled() -> bool:
        nonlocal metrics_total, log_total
        m = spend_metrics(url)
        metrics_total = {d: sum(v for (dep, _), v in m.items() if dep == d) for d in {dep for dep, _ in m}}
        log_total = {d: r["cost_usd"] for d, r in log_by_deployment().items()}
        return all(metrics_total.get(d, 0.0) == pytest.approx(v, abs=1e-9) for d, v in log_total.items())

    wait_until(settled, 30, f"the metrics catching up with the spend log: {metrics_total} vs {log_total}")
    assert set(log_total) >= {"gpt", "flaky", "tiny"} and log_total["gpt"] > 0 and log_total["tiny"] > 0
    assert log_total["flaky"] == 0  # failed runs used no tokens
    by_tenant = {r["tenant"]: r for r in admin_call(url, "GET", "/admin/spend?group_by=tenant").json()["data"]}
    assert "team-b" in by_tenant and "default" in by_tenant
    status = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "atomr-status"), "--address", node.address],
        capture_output=True,
        text=True,
        timeout=120,
        env=node_env(),
        stdin=subprocess.DEVNULL,
    )
    assert status.returncode == 0 and "spend by tenant:" in status.stdout and "team-b" in status.stdout, status
    spend = keys_cli(node, admin, "spend", "--by", "deployment").stdout
    assert any(line.split()[0] == "gpt" for line in spend.splitlines()), spend


def test_a_killed_key_keeper_comes_back_with_its_keys_and_budgets(head: tuple[Node, str, Path]) -> None:
    node, url, _ = head
    key_id, secret = make_key(url, budget_usd=0.015, period="month")
    assert chat(url, secret).status_code == 200  # 0.009 spent
    (keeper,) = [p for p in system_processes(node.port) if p.cmdline()[0].startswith("KeyKeeper ")]
    keeper.send_signal(signal.SIGKILL)
    assert process_gone(keeper.pid)
    # started again by the node: the key still works and what it spent still counts
    # (a request sent meanwhile waits for the keeper's answer: its gateway asks the new one again)
    assert chat(url, secret).status_code == 200
    assert chat(url, secret).status_code == 429  # 0.018 spent: nothing left of 0.015
    shown = admin_call(url, "GET", f"/admin/keys/{key_id}").json()
    assert shown["spent_usd"] == pytest.approx(2 * COST_USD), shown
    # and a revocation still reaches the gateways
    assert admin_call(url, "DELETE", f"/admin/keys/{key_id}").status_code == 200
    wait_until(lambda: chat(url, secret).status_code == 401, 5, "revoked after the restart")
