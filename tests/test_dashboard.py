"""The Grafana dashboard (system_config/grafana/atomr-dashboard.json) against the real metrics.

The structure is checked without a node; then a real head node with the HTTP front gets a little
traffic (completions, a chat completion, a stream, an unknown model, a too-long request) and every
metric name the dashboard's PromQL uses must be in its ``/metrics`` exposition, with the labels the
dashboard filters and groups by.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from atomr.observability.metrics import DeploymentMetrics, HttpMetrics
from tests.conftest import REPO, Node

DASHBOARD = REPO / "system_config" / "grafana" / "atomr-dashboard.json"
DS_UID = "${DS_PROMETHEUS}"
DEPLOYMENT_MATCHER = 'deployment=~"$deployment"'
VARIABLE_QUERY = "label_values(atomr_requests_total, deployment)"

# The series names a metric family of each type is exposed as (text format 0.0.4; *_created is off).
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "gauge": ("",),
}
# Series that exist (HELP and TYPE) but have no sample until something happens that a tiny local
# node under light traffic never does.
SAMPLED_ONLY_LATER = {
    "atomr_replica_restarts_total": "a replica restart",
    "atomr_circuit_state": "a replica with a circuit breaker (remote APIs)",
    "atomr_http_connections_refused_total": "a connection refused by a limit (tests/test_safe_edges.py)",
}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or"}
PROMQL_WORDS |= {"unless", "inf", "nan"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")


# -- reading the dashboard and PromQL -----------------------------------------------------------


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text())


def all_panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in dash.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in all_panels(dash) for t in p.get("targets", []) if "expr" in t]


def variable_query(var: dict[str, Any]) -> str:
    q = var.get("query", "")
    return q.get("query", "") if isinstance(q, dict) else str(q)


def variable_metric_names(dash: dict[str, Any]) -> set[str]:
    """Metric names in the template variables' ``label_values(metric, label)`` queries."""
    names = set()
    for var in dash["templating"]["list"]:
        m = re.fullmatch(
            r"\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*,\s*\w+\s*\)\s*", variable_query(var)
        )
        if m:
            names.add(m.group(1))
    return names


def _strip(expr: str) -> str:
    """`expr` without string literals, label matchers, range / subquery brackets and label lists."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    return _GROUPING.sub(" ", s)


def metric_names(expr: str) -> set[str]:
    """The metric (series) names a PromQL expression selects, exactly as written (with _bucket etc.)."""
    s = _strip(expr)
    names = set()
    for m in _IDENT.finditer(s):
        if s[m.end() :].lstrip().startswith("("):  # a function or an aggregation
            continue
        if m.group().lower() in PROMQL_WORDS:
            continue
        if m.start() > 0 and s[m.start() - 1] in "$.0123456789":  # a Grafana variable or a number
            continue
        names.add(m.group())
    return names


def selector_labels(expr: str) -> dict[str, set[str]]:
    """Label names each metric's selector matches on, e.g. {'atomr_requests_total': {'deployment'}}."""
    out: dict[str, set[str]] = {}
    for m in _SELECTOR.finditer(expr):
        matchers = re.sub(r'"(?:[^"\\]|\\.)*"', '""', m.group(2))
        out.setdefault(m.group(1), set()).update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    return out


def grouping_labels(expr: str) -> set[str]:
    """Label names of every ``by (...)`` / ``without (...)`` / ``on (...)`` list."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return {lab.strip() for m in _GROUPING.finditer(s) for lab in m.group(2).split(",") if lab.strip()}


# -- reading an exposition ----------------------------------------------------------------------


def exposition(text: str) -> tuple[set[str], dict[str, set[str]], dict[str, list[Any]]]:
    """(series names declared by the families, label names per sampled series name, samples by name)."""
    declared: set[str] = set()
    labels: dict[str, set[str]] = {}
    samples: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        declared |= {fam.name + suffix for suffix in SERIES_SUFFIXES.get(fam.type, ("",))}
        for s in fam.samples:
            labels.setdefault(s.name, set()).update(s.labels)
            samples.setdefault(s.name, []).append(s)
    return declared, labels, samples


def recorder_series() -> dict[str, set[str]]:
    """Every family atomr records (from the recorders themselves): family name -> its series names."""
    out = {}
    for registry in (DeploymentMetrics("d", "1", "ort").registry, HttpMetrics("gw").registry):
        for fam in registry.collect():
            out[fam.name] = {fam.name + suffix for suffix in SERIES_SUFFIXES[fam.type]}
    return out


# -- talking to a node --------------------------------------------------------------------------


def http_base(node: Node) -> str:
    m = re.search(r"http front on (http://\S+)", node.output())
    assert m, f"no HTTP front line in the node's output:\n{node.output()[-2000:]}"
    return m.group(1)


def post(base: str, path: str, body: dict[str, Any], timeout: float = 30.0) -> tuple[int, bytes]:
    req = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(base: str) -> str:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode()


def requests_total(text: str, deployment: str) -> float:
    _, _, samples = exposition(text)
    return sum(s.value for s in samples.get("atomr_requests_total", []) if s.labels.get("deployment") == deployment)


def scrape_when(base: str, deployment: str, expected: float, timeout: float = 20.0) -> str:
    """/metrics once the collector has the snapshot with `expected` requests for `deployment`."""
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(base)
        if requests_total(text, deployment) == expected or time.monotonic() > deadline:
            return text
        time.sleep(0.25)


# -- tests --------------------------------------------------------------------------------------


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (deployment, le) (rate(atomr_request_latency_seconds_bucket"
        '{deployment=~"$deployment", outcome!="atomr_not_a_metric"}[$__rate_interval]))) / on (x) '
        "group_left(y) sum without (tenant) (atomr_queue_depth offset 5m) or vector(0)"
    )
    assert metric_names(expr) == {"atomr_request_latency_seconds_bucket", "atomr_queue_depth"}
    assert selector_labels(expr) == {"atomr_request_latency_seconds_bucket": {"deployment", "outcome"}}
    assert grouping_labels(expr) == {"deployment", "le", "x", "y", "tenant"}
    assert metric_names("sum(rate(atomr_requests_total[5m])) by (outcome)") == {"atomr_requests_total"}


def test_dashboard_structure() -> None:
    dash = load_dashboard()
    assert dash["title"] and dash["uid"] and isinstance(dash["schemaVersion"], int)
    assert dash.get("id") is None, "an importable dashboard has no database id"

    inputs = {i["name"]: i for i in dash["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"

    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds_var = variables["DS_PROMETHEUS"]
    assert ds_var["type"] == "datasource" and ds_var["query"] == "prometheus"
    dep = variables["deployment"]
    assert dep["type"] == "query"
    assert variable_query(dep) == VARIABLE_QUERY
    assert dep["datasource"]["uid"] == DS_UID
    assert dep["multi"] and dep["includeAll"]

    ids = []
    for panel in all_panels(dash):
        ids.append(panel["id"])
        title = panel.get("title", "")
        assert title.strip(), f"a panel without a title: {panel}"
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, title
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == DS_UID, title
        targets = panel.get("targets", [])
        assert targets, f"panel {title!r} has no targets"
        assert len({t["refId"] for t in targets}) == len(targets), f"panel {title!r}: refIds repeat"
        for t in targets:
            assert t.get("expr", "").strip(), f"panel {title!r}: a target without expr"
            assert t["datasource"]["uid"] == DS_UID, title
            names = metric_names(t["expr"])
            assert names and all(n.startswith("atomr_") for n in names), (title, t["expr"], names)
            # Per deployment: everything but the HTTP front's own counters is filtered by the variable.
            if not names <= {"atomr_http_requests_total", "atomr_http_connections_refused_total"}:
                assert DEPLOYMENT_MATCHER in t["expr"], f"panel {title!r} ignores $deployment: {t['expr']}"
    assert len(ids) == len(set(ids)), "panel ids repeat"

    # The panels the dashboard promises, by title.
    titles = " | ".join(p["title"].lower() for p in all_panels(dash))
    for words in (
        "request rate by outcome",
        "error rate by kind",
        "latency p50 / p95 / p99",
        "time to first token p50 / p95",
        "tokens per second",
        "queue depth",
        "in flight per replica",
        "replica up",
        "replica restarts",
        "circuit breaker",
        "http requests by status",
    ):
        assert words in titles, f"no panel titled like {words!r}"

    # Every metric atomr records is on the dashboard, under a name it is exposed as.
    used = set().union(*(metric_names(e) for e in dashboard_exprs(dash)))
    for family, series in recorder_series().items():
        assert used & series, f"the dashboard does not use {family} (exposed as {sorted(series)})"

    # The quantiles, each over its histogram's buckets grouped by le.
    quantiles: dict[str, set[str]] = {}
    for e in dashboard_exprs(dash):
        for q, rest in re.findall(r"histogram_quantile\(\s*([0-9.]+)\s*,(.*)", e):
            (name,) = metric_names(rest)
            assert name.endswith("_bucket") and "le" in grouping_labels(rest), e
            quantiles.setdefault(name, set()).add(q)
    assert quantiles["atomr_request_latency_seconds_bucket"] == {"0.5", "0.95", "0.99"}
    assert quantiles["atomr_time_to_first_token_seconds_bucket"] == {"0.5", "0.95"}


def test_dashboard_metrics_exist_on_a_real_node() -> None:
    dash = load_dashboard()
    exprs = dashboard_exprs(dash)
    used = set().union(*(metric_names(e) for e in exprs)) | variable_metric_names(dash)
    assert "atomr_requests_total" in used

    node = Node("--http-port", "0", config=REPO / "system_config" / "local.yaml")
    try:
        base = http_base(node)
        for i in range(3):
            status, body = post(base, "/v1/completions", {"model": "tiny", "prompt": f"The actor {i}", "max_tokens": 8})
            assert status == 200, body
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}
        assert post(base, "/v1/chat/completions", chat)[0] == 200
        stream = {"model": "tiny", "prompt": "Once", "max_tokens": 8, "stream": True}
        status, body = post(base, "/v1/completions", stream)
        assert status == 200 and b"[DONE]" in body, body
        status, body = post(base, "/v1/completions", {"model": "no-such-model", "prompt": "x", "max_tokens": 4})
        assert status == 404, body
        status, body = post(base, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 100000})
        assert status == 400 and b"context_length" in body, body

        # 5 answered + 1 context_length reach the deployment; the unknown model does not.
        text = scrape_when(base, "tiny", 6)
    finally:
        assert node.stop() == []

    declared, labels, samples = exposition(text)
    assert requests_total(text, "tiny") == 6, text
    outcomes = {s.labels["outcome"] for s in samples["atomr_requests_total"]}
    assert {"ok", "context_length"} <= outcomes
    statuses = {s.labels["status"] for s in samples["atomr_http_requests_total"]}
    assert {"200", "400", "404"} <= statuses

    missing = sorted(n for n in used if n not in declared and n not in labels)
    assert not missing, f"the dashboard uses metrics that /metrics does not expose: {missing}"
    unsampled = sorted(n for n in used if n not in labels and n not in SAMPLED_ONLY_LATER)
    assert not unsampled, f"the dashboard's metrics have no samples after traffic: {unsampled}"

    # The labels the dashboard filters and groups by are on the series it reads.
    for e in exprs:
        for name, matched in selector_labels(e).items():
            if name in labels:
                assert matched <= labels[name], f"{e}: {name} has labels {sorted(labels[name])}"
        have = set().union(*(labels.get(n, set()) for n in metric_names(e)))
        if have:
            assert grouping_labels(e) <= have, f"{e}: groups by labels its metrics lack ({sorted(have)})"
    assert "tiny" in {s.labels["deployment"] for s in samples["atomr_requests_total"]}
