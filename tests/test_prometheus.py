"""A real Prometheus scrapes a real node: the counts it stores are the requests the node answered.

A head node with the HTTP front answers exactly N requests; a Prometheus server (the ``prometheus``
binary, started here on a free port with its own config and storage) scrapes the head's
``/metrics`` every second, and its query API must return N. Every expression of the Grafana
dashboard is evaluated by that Prometheus too. ``promtool`` lints the exposition and the example
scrape config. Without the binaries the tests skip, unless ``$ATOMR_REQUIRE_PROMETHEUS`` is set
(CI installs them), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atomr.cluster.system import free_port
from tests.conftest import REPO, Node, node_env
from tests.test_dashboard import (
    SAMPLED_ONLY_LATER,
    VARIABLE_QUERY,
    dashboard_exprs,
    http_base,
    load_dashboard,
    metric_names,
    post,
    scrape_when,
)

EXAMPLE_CONFIG = REPO / "system_config" / "prometheus" / "prometheus.yml"
# Exactly this many requests reach the deployment: N_OK answered, one refused as too long.
N_OK = 6
N = N_OK + 1
QUERY_WAIT_S = 30.0


def require_tool(name: str) -> str:
    """The path of `name`, or skip (fail where $ATOMR_REQUIRE_PROMETHEUS is set)."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} is not installed (Debian: apt-get install prometheus)"
    if os.environ.get("ATOMR_REQUIRE_PROMETHEUS"):
        pytest.fail(reason + " but ATOMR_REQUIRE_PROMETHEUS requires it")
    pytest.skip(reason)


def get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


class Prometheus:
    """A Prometheus server in its own process, scraping `target` (host:port) every second."""

    def __init__(self, binary: str, target: str, workdir: Path) -> None:
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: atomr\n"
            "    metrics_path: /metrics\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        for attempt in range(3):  # the free port can be taken before Prometheus binds it
            self.port = free_port()
            self.base = f"http://127.0.0.1:{self.port}"
            with self.log_path.open("wb") as log:
                self.proc = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={self.config}",
                        f"--storage.tsdb.path={workdir / f'data-{attempt}'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=workdir,
                    env=node_env(),  # the session marker: the leak guard finds it if it outlives the test
                )
            if self._wait_ready(20.0):
                return
            if "address already in use" not in self.output():
                break
        out = self.output()
        self.stop()
        raise RuntimeError(f"prometheus did not become ready:\n{out[-3000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.base + "/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        return False

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = self.base + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            body = get_json(url)
        except urllib.error.HTTPError as exc:  # 400: a bad expression
            raise AssertionError(f"{promql}: {exc.code} {exc.read().decode(errors='replace')}") from None
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        """Terminate by PID, wait, kill if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool")


@pytest.fixture(scope="module")
def prometheus() -> str:
    return require_tool("prometheus")


# The tools come first in each test's arguments, so that a missing one skips before a node starts.
@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, str, int]]:
    """A head node with the HTTP front that has answered exactly N requests for `tiny`: (its HTTP
    base URL, its /metrics text once the collector has them all, the completion tokens it reported)."""
    node = Node("--http-port", "0", config=REPO / "system_config" / "local.yaml")
    try:
        base = http_base(node)
        tokens = 0
        for i in range(N_OK):
            status, body = post(base, "/v1/completions", {"model": "tiny", "prompt": f"Actor {i}", "max_tokens": 6})
            assert status == 200, body
            tokens += json.loads(body)["usage"]["completion_tokens"]
        status, body = post(base, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 100000})
        assert status == 400 and b"context_length" in body, body
        text = scrape_when(base, "tiny", N)
        yield base, text, tokens
    finally:
        assert node.stop() == []


def test_promtool_accepts_the_exposition(promtool: str, served: tuple[str, str, int]) -> None:
    _, text, _ = served
    assert "atomr_requests_total" in text
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    report = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and report == "", f"promtool check metrics (rc {done.returncode}):\n{report}"


def test_example_scrape_config_is_valid(promtool: str) -> None:
    done = subprocess.run(
        [promtool, "check", "config", str(EXAMPLE_CONFIG)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_scrapes_the_node(prometheus: str, served: tuple[str, str, int], tmp_path: Path) -> None:
    base, _, tokens = served
    prom = Prometheus(prometheus, base.removeprefix("http://"), tmp_path)
    try:
        total = 'sum(atomr_requests_total{deployment="tiny"})'
        deadline = time.monotonic() + QUERY_WAIT_S
        value = prom.scalar(total)
        while value != N and time.monotonic() < deadline:
            time.sleep(0.5)
            value = prom.scalar(total)
        assert value == N, f"{total} = {value} after {QUERY_WAIT_S:.0f} s, wanted {N}\n{prom.output()[-2000:]}"

        assert prom.scalar('up{job="atomr"}') == 1
        by_outcome = {
            r["metric"]["outcome"]: float(r["value"][1])
            for r in prom.query('sum by (outcome) (atomr_requests_total{deployment="tiny"})')
        }
        assert by_outcome == {"ok": N_OK, "context_length": 1}
        assert prom.scalar('sum(atomr_http_requests_total{route="/v1/completions"})') == N
        assert prom.scalar('sum(atomr_completion_tokens_total{deployment="tiny"})') == tokens

        # The dashboard's variable and every panel expression, as Grafana would send them.
        values = get_json(prom.base + "/api/v1/label/deployment/values?match[]=atomr_requests_total")["data"]
        assert "tiny" in values, f"{VARIABLE_QUERY} gives {values}"
        exprs = [
            e.replace("$deployment", "tiny").replace("$__rate_interval", "1m")
            for e in dashboard_exprs(load_dashboard())
        ]
        deadline = time.monotonic() + 10.0  # rate() needs two scrapes in its window
        while True:
            empty = [e for e in exprs if not prom.query(e) and not metric_names(e) <= set(SAMPLED_ONLY_LATER)]
            if not empty or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert not empty, f"dashboard expressions with no data: {empty}"
    finally:
        prom.stop()
