"""OpenTelemetry traces of requests, exported over OTLP/HTTP; off unless the node config has a
``tracing:`` section.

One request is one trace across the processes it crosses, with spans named and attributed after
OpenTelemetry's GenAI semantic conventions (``gen_ai.operation.name``, ``gen_ai.request.model``,
``gen_ai.usage.input_tokens``...):

* the HTTP front (in a gateway process): a SERVER span per inference request, the child of the
  caller's ``traceparent`` (and ``tracestate``) when it sent one, ended with the HTTP status
  once the answer (a whole stream included) is written (`HttpTracing`, `http_span`);
* the coordinator: an INTERNAL span from a request's admission (queue, dispatch) to its final
  answer (`RequestSpans`);
* wherever a runner serves it (a runner host, or the gateway for a remote deployment served
  in-process, `atomr.http.inline`): the inference span, ``{operation} {model}``, of kind CLIENT
  for a provider's API and INTERNAL for a local engine, with the request's parameters, the
  finish reasons and the usage (`session_span`).

The context crosses processes inside the request itself: `InferenceRequest.trace` is a W3C
``traceparent`` (the span that handed the request on), which each process continues. The JSON
request log line carries its trace id (`trace_id`).

Set-up. The node process validates the section (`tracing_settings_from_config`) and `install`s
it: it puts the settings in ``$ATOMR_TRACING`` before its actor system starts, so every process
it starts (forked or spawned) finds them, and imports the SDK once there, so forked actors
inherit it instead of importing it on their first request. Each process builds its own
TracerProvider lazily, on its first span (again in a forked child: the resource names its own
``process.pid``): a BatchSpanProcessor with a short schedule delay (spans leave within
``schedule_delay_ms``) and the OTLP/HTTP protobuf exporter. Actors flush at exit (`flush`, from
`atomr.actors.sidecar`), bounded, since Thespian ends actor processes without running atexit.
Sampling: a new trace is sampled with ``sample_ratio``; a trace the caller started keeps the
caller's decision (parent-based).

Cost. Off, nothing of OpenTelemetry is imported and a request pays a ContextVar read at the
front and None checks elsewhere (about 0.1 us in all, measured in-process); the ASGI middleware
is not even installed. On, measured on the 2-core machines here (``scripts/bench/tracing_cost.py``,
every request sampled, exported to a local receiver), medians of per-round differences in two
runs of 5 and 9 interleaved rounds: the front's p50 at concurrency 1 moved by +0.04 and +0.06 ms
(1.04x), its p99 from about 4 to 6.5-7 ms, its requests/s at concurrency 64 to 0.65-0.73x. What
it costs, and the choices made for it:

* spans are recorded by this module and handed, once ended, to the SDK's BatchSpanProcessor as
  the SDK's own `ReadableSpan` (what its exporters read), with ids from the SDK's id generator
  and its ratio sampler's arithmetic; the SDK's Tracer made the front's two spans per request
  cost 71-106 us on the request's path (attribute validation, locks, context objects), this way
  18-29 us. Only atomr's own values go in, so nothing needs validating;
* the export runs on the processor's thread: the OTLP encoder takes 40-70 us per span there, the
  main cost left, and the source of the p99 tail (the request's thread waits for the GIL while a
  batch is encoded) and of the throughput cost; fewer attributes per span are the lever;
* the carried context is the 55-character traceparent in the request message, parsed with one
  regular expression; only the front reads ``tracestate`` (kept on its span, not carried on).
"""

from __future__ import annotations

import contextvars
import dataclasses
import importlib
import importlib.util
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from atomr.core.errors import ConfigError
from atomr.core.sections import validated_section
from atomr.core.types import Chunk, InferenceRequest, StreamEvent, Usage

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from atomr.core.deployment import Deployment

log = structlog.get_logger("atomr.tracing")

ENV = "ATOMR_TRACING"  # the settings (JSON) every process of a node reads
INSTALL_HINT = "pip install 'atomr[tracing]'"
# What the exporter needs; checked before the node starts (a clear config error rather than
# spans silently missing).
_PACKAGES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")
EXIT_FLUSH_S = 2.0  # an exiting actor waits at most this long for its last spans to leave
MAX_OPEN_SPANS = 65536  # per coordinator: beyond it the oldest open span is ended (never a leak)

# Semantic-convention names (GenAI, HTTP): written out here rather than imported, so the module
# needs nothing of OpenTelemetry until a span is made.
OPERATION = "gen_ai.operation.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
PROVIDER = "gen_ai.provider.name"
SYSTEM = "gen_ai.system"  # the older name of gen_ai.provider.name, which many back ends still read
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
FINISH_REASONS = "gen_ai.response.finish_reasons"
ERROR_TYPE = "error.type"
# gen_ai.provider.name per runtime: the convention's value for providers it names, the engine's
# name for local ones
PROVIDERS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "litellm": "litellm",
    "ort": "onnxruntime_genai",
    "ort-embed": "onnxruntime",
    "vllm": "vllm",
    "mistralrs": "mistral_rs",
    "tensorrt": "tensorrt_llm",
}


class TracingSettings(BaseModel):
    """The ``tracing:`` section of a node config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True  # false keeps the section but traces nothing
    otlp_endpoint: str  # the OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces
    service_name: str = Field(default="atomr", min_length=1)
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)  # of new traces; callers' decisions are kept
    headers: dict[str, str] = Field(default_factory=dict)  # sent with every export (e.g. a collector's key)
    schedule_delay_ms: int = Field(default=200, ge=1, le=60_000)
    export_timeout_s: float = Field(default=5.0, gt=0, le=120, allow_inf_nan=False)
    max_queue_size: int = Field(default=2048, ge=1, le=1_000_000)

    @field_validator("otlp_endpoint")
    @classmethod
    def _check_endpoint(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL (the OTLP/HTTP traces endpoint)")
        return v


def tracing_settings_from_config(raw: Any, where: str = "config") -> TracingSettings | None:
    """The ``tracing:`` section: None when absent or ``enabled: false``; a ConfigError naming the
    setting when invalid, or when the OpenTelemetry packages it needs are not installed."""
    if raw is None:
        return None
    settings = validated_section(TracingSettings, raw, "tracing", where)
    if not settings.enabled:
        return None
    missing = [name for name in _PACKAGES if not _installed(name)]
    if missing:
        raise ConfigError(
            f"{where}: tracing: needs the OpenTelemetry SDK and OTLP/HTTP exporter, which are not "
            f"installed ({', '.join(missing)}): {INSTALL_HINT}, or remove the tracing section",
            field="tracing",
        )
    return settings


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# ---- this process's state ----------------------------------------------------------------------

_UNREAD: Any = object()
_settings: Any = _UNREAD  # TracingSettings | None once read from $ATOMR_TRACING
_pipeline: _Pipeline | None = None
_lock = threading.Lock()
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")


def install(settings: TracingSettings | None) -> None:
    """In the node process, before its actor system starts: `settings` for it and every process
    it starts (None: tracing off). Imports the SDK here when on, for forked children to inherit."""
    global _settings
    if settings is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = settings.model_dump_json()
        _import_sdk()
    with _lock:
        _settings = settings


def settings() -> TracingSettings | None:
    """This process's settings (from ``$ATOMR_TRACING``, read once), or None when off."""
    global _settings
    current = _settings
    if current is _UNREAD:
        current = _settings = _read_env()
    return current


def enabled() -> bool:
    return settings() is not None


def _read_env() -> TracingSettings | None:
    raw = os.environ.get(ENV)
    if not raw:
        return None
    try:
        return TracingSettings.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        log.warning("tracing off: unreadable settings", variable=ENV, error=str(exc).splitlines()[0])
        return None


def _import_sdk() -> None:
    for name in (*_PACKAGES, "opentelemetry.sdk.trace.export", "opentelemetry.sdk.trace.sampling"):
        importlib.import_module(name)


class _Pipeline:
    """This process's TracerProvider, its BatchSpanProcessor and OTLP/HTTP exporter, and what
    finished spans are made of (imported once, on the first span)."""

    def __init__(self, s: TracingSettings) -> None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
        from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace.span import TraceState

        self.pid = os.getpid()
        self.resource = Resource.create(
            {
                "service.name": s.service_name,
                "process.pid": self.pid,
                "process.parent_pid": os.getppid(),
                "process.runtime.name": sys.implementation.name,
                "process.runtime.version": ".".join(str(v) for v in sys.version_info[:3]),
                "host.name": socket.gethostname(),
            }
        )
        exporter = OTLPSpanExporter(endpoint=s.otlp_endpoint, headers=s.headers or None, timeout=s.export_timeout_s)
        self.processor = BatchSpanProcessor(
            exporter, max_queue_size=s.max_queue_size, schedule_delay_millis=s.schedule_delay_ms
        )
        # Not the SDK's atexit shutdown: it may wait 30 s for an unreachable collector (`flush`).
        self.provider: TracerProvider = TracerProvider(resource=self.resource, shutdown_on_exit=False)
        self.provider.add_span_processor(self.processor)
        self.scope = InstrumentationScope("atomr")
        self.ids = RandomIdGenerator()
        self.root_bound = TraceIdRatioBased.get_bound_for_rate(s.sample_ratio)
        self.trace_id_limit = TraceIdRatioBased.TRACE_ID_LIMIT
        self.ReadableSpan = ReadableSpan
        self.SpanContext = trace.SpanContext
        self.TraceFlags = trace.TraceFlags
        self.TraceState = TraceState
        self.SERVER = trace.SpanKind.SERVER
        self.CLIENT = trace.SpanKind.CLIENT
        self.INTERNAL = trace.SpanKind.INTERNAL
        self.UNSET = trace.Status(trace.StatusCode.UNSET)
        self.ERROR = trace.Status(trace.StatusCode.ERROR)

    def start(self, name: str, carried: str | None, kind: Any, attributes: dict[str, Any], state: str = "") -> _Span:
        """A span begun now: the child of the carried traceparent, else the root of a new trace
        (sampled with the configured ratio); `state`: a caller's tracestate header."""
        parent = _parse(carried)
        if parent is None:
            trace_id = self.ids.generate_trace_id()
            sampled = (trace_id & self.trace_id_limit) < self.root_bound
            return _Span(self, name, kind, trace_id, 0, sampled, attributes, "")
        trace_id, parent_id, flags = parent
        return _Span(self, name, kind, trace_id, parent_id, bool(flags & 1), attributes, state)


def _parse(carried: str | None) -> tuple[int, int, int] | None:
    """(trace id, span id, flags) of a W3C traceparent; None when absent or not one (then a new
    trace starts). Versions after 00 may append fields, which are ignored."""
    if not carried:
        return None
    m = _TRACEPARENT.match(carried.strip())
    if m is None or m[1] == "ff" or (m[1] == "00" and m[5]):
        return None
    trace_id, span_id = int(m[2], 16), int(m[3], 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(m[4], 16)


class _Span:
    """A span being recorded. Ended, it is handed to the BatchSpanProcessor as the SDK's
    `ReadableSpan` (only when sampled): the same spans the SDK's Tracer makes, without its
    per-span bookkeeping on the request's path (see the module doc)."""

    __slots__ = ("_p", "attributes", "kind", "name", "parent_id", "sampled", "span_id", "start_ns", "state", "trace_id")

    def __init__(
        self,
        p: _Pipeline,
        name: str,
        kind: Any,
        trace_id: int,
        parent_id: int,
        sampled: bool,
        attributes: dict[str, Any],
        state: str,
    ) -> None:
        self._p = p
        self.name = name
        self.kind = kind
        self.trace_id = trace_id
        self.span_id = p.ids.generate_span_id()
        self.parent_id = parent_id
        self.sampled = sampled
        self.attributes = attributes
        self.state = state
        self.start_ns = time.time_ns()

    @property
    def traceparent(self) -> str:
        """The W3C traceparent that makes this span the parent of what follows."""
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{'01' if self.sampled else '00'}"

    def end(self, error: str | None = None) -> None:
        """Ended now; `error`: the error.type of a failure (the span's status is then ERROR)."""
        if not self.sampled:
            return
        p = self._p
        status = p.UNSET
        if error is not None:
            self.attributes[ERROR_TYPE] = error
            status = p.ERROR
        flags = p.TraceFlags(1)
        state = p.TraceState.from_header([self.state]) if self.state else None
        context = p.SpanContext(self.trace_id, self.span_id, False, flags, state)
        parent = p.SpanContext(self.trace_id, self.parent_id, True, flags) if self.parent_id else None
        span = p.ReadableSpan(
            self.name,
            context,
            parent,
            p.resource,
            self.attributes,
            kind=self.kind,
            status=status,
            start_time=self.start_ns,
            end_time=time.time_ns(),
            instrumentation_scope=p.scope,
        )
        p.processor.on_end(span)


def _tracer() -> _Pipeline | None:
    """This process's pipeline, set up on first use (and again in a forked child)."""
    p = _pipeline
    if p is not None and p.pid == os.getpid():
        return p
    return _set_up()


def _set_up() -> _Pipeline | None:
    global _pipeline, _settings
    s = settings()
    if s is None:
        return None
    with _lock:
        p = _pipeline
        if p is not None and p.pid == os.getpid():
            return p
        try:
            p = _Pipeline(s)
        except Exception as exc:  # noqa: BLE001 - a broken exporter must not fail requests
            log.error("tracing off in this process: set-up failed", error=f"{type(exc).__name__}: {exc}")
            _settings = None
            return None
        _pipeline = p
    return p


def flush(timeout_s: float = EXIT_FLUSH_S) -> None:
    """Export the spans this process still holds, waiting at most `timeout_s` (nothing when off)."""
    p = _pipeline
    if p is None or p.pid != os.getpid():
        return
    done = threading.Thread(target=p.provider.force_flush, name="atomr-trace-flush", daemon=True)
    done.start()
    done.join(timeout_s)


def trace_id(carried: str) -> str:
    """The trace id of a carried traceparent (for log lines)."""
    return carried[3:35]


def operation(request: InferenceRequest) -> str:
    """The request's gen_ai.operation.name."""
    if request.task == "embed":
        return "embeddings"
    if request.task == "count_tokens":
        return "count_tokens"
    return "chat" if request.is_chat else "text_completion"


def _usage(attributes: dict[str, Any], usage: Usage | None) -> None:
    if usage is not None:
        attributes[INPUT_TOKENS] = usage.prompt_tokens
        attributes[OUTPUT_TOKENS] = usage.completion_tokens


# ---- the HTTP front --------------------------------------------------------------------------

_HTTP: contextvars.ContextVar[HttpSpan | None] = contextvars.ContextVar("atomr_http_span", default=None)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class HttpSpan:
    """One HTTP request's SERVER span: started by the front's admission of an inference request
    (`http_span`), ended by `HttpTracing` with the status once the answer is written."""

    __slots__ = ("_p", "span", "status")

    def __init__(self, pipeline: _Pipeline) -> None:
        self._p = pipeline
        self.span: _Span | None = None
        self.status = 0

    def start(self, headers: Mapping[str, str], route: str) -> None:
        attributes = {"http.request.method": "POST", "http.route": route}
        kind = self._p.SERVER
        self.span = self._p.start(
            f"POST {route}", headers.get("traceparent"), kind, attributes, headers.get("tracestate") or ""
        )

    def admit(self, request: InferenceRequest) -> str | None:
        """Notes `request` on this span; the traceparent the request is to carry (every
        process's spans of it then join this span's trace)."""
        span = self.span
        if span is None:
            return None
        a = span.attributes
        a[OPERATION] = operation(request)
        a[REQUEST_MODEL] = request.model
        a["atomr.request_id"] = request.request_id
        return span.traceparent

    def end(self, error: BaseException | None) -> None:
        span = self.span
        if span is None:
            return
        status = self.status or 500
        span.attributes["http.response.status_code"] = status
        if error is not None and not isinstance(error, Exception):  # cancelled: the caller left
            span.attributes["atomr.outcome"] = "cancelled"
            span.end()
        elif status >= 500:
            span.end(type(error).__name__ if error is not None else str(status))
        else:
            span.end()


def http_span(headers: Mapping[str, str], route: str) -> HttpSpan | None:
    """The current HTTP request's span, started now (None unless tracing is on)."""
    holder = _HTTP.get()
    if holder is not None and holder.span is None:
        holder.start(headers, route)
    return holder


class HttpTracing:
    """ASGI middleware that ends each HTTP request's span (if the request started one) once its
    answer is written, with its status. Installed by the app only when tracing is on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        _tracer()  # set up now rather than on the first request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        p = _tracer() if scope["type"] == "http" else None
        if p is None:
            await self.app(scope, receive, send)
            return
        holder = HttpSpan(p)
        token = _HTTP.set(holder)

        async def send_and_note(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                holder.status = message["status"]
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_and_note)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _HTTP.reset(token)
            holder.end(error)


# ---- the coordinator -------------------------------------------------------------------------


class _HasRequest(Protocol):
    request: InferenceRequest


T = TypeVar("T", bound=_HasRequest)


class RequestSpans:
    """Spans of requests that begin and end in different messages (the coordinator's: from a
    request's admission to its final answer), by request id."""

    def __init__(self, pipeline: _Pipeline) -> None:
        self._p = pipeline
        self._open: dict[str, _Span] = {}

    def begin(self, items: list[T], deployment: str) -> list[T]:
        """Start a span for each item's request; the items carry it on (to replicas, fallbacks)."""
        out: list[T] = []
        for item in items:
            req = item.request
            span = self._open.get(req.request_id)
            if span is None:  # (a copy resent by its caller continues the span of the first)
                attributes = {
                    OPERATION: operation(req),
                    REQUEST_MODEL: req.model,
                    "atomr.deployment": deployment,
                    "atomr.request_id": req.request_id,
                    "atomr.tenant": req.tenant,
                }
                span = self._p.start(f"dispatch {deployment}", req.trace, self._p.INTERNAL, attributes)
                if len(self._open) >= MAX_OPEN_SPANS:
                    oldest = next(iter(self._open))
                    self._open.pop(oldest).end()
                self._open[req.request_id] = span
            out.append(dataclasses.replace(item, request=dataclasses.replace(req, trace=span.traceparent)))  # type: ignore[type-var]
        return out

    def end(self, request: InferenceRequest, outcome: str, replica: str, usage: Usage | None) -> None:
        """The request's end here (`outcome`: ok, fallback, cancelled or an error kind)."""
        span = self._open.pop(request.request_id, None)
        if span is None:
            return
        a = span.attributes
        a["atomr.outcome"] = outcome
        if replica:
            a["atomr.replica"] = replica
        _usage(a, usage)
        span.end(None if outcome in ("ok", "fallback", "cancelled") else outcome)

    def __len__(self) -> int:
        return len(self._open)


def request_spans() -> RequestSpans | None:
    """A table of request spans for this process (None unless tracing is on)."""
    p = _tracer()
    return RequestSpans(p) if p is not None else None


# ---- a request on a runner -------------------------------------------------------------------


class SessionSpan:
    """The inference span of one request on one runner (CLIENT for a provider's API)."""

    __slots__ = ("_reasons", "span")

    def __init__(self, span: _Span) -> None:
        self.span = span
        self._reasons: list[str] = []

    def wrap(
        self, send_chunk: Callable[[StreamEvent], None], send_final: Callable[[StreamEvent], None]
    ) -> tuple[Callable[[StreamEvent], None], Callable[[StreamEvent], None]]:
        """The session's two outlets, noting finish reasons and ending the span at the final event."""

        def chunk(event: StreamEvent) -> None:
            c: Chunk | None = event.chunk
            if c is not None and c.finish_reason:
                self._reasons.append(c.finish_reason)
            send_chunk(event)

        def final(event: StreamEvent) -> None:
            try:
                self.end(event)
            finally:
                send_final(event)

        return (chunk if self.span.sampled else send_chunk), final

    def end(self, event: StreamEvent) -> None:
        span = self.span
        a = span.attributes
        if self._reasons:
            a[FINISH_REASONS] = tuple(self._reasons)
        _usage(a, event.usage)
        error = event.error
        if error is not None and error.kind == "cancelled":
            a["atomr.outcome"] = "cancelled"
            error = None
        span.end(error.kind if error is not None else None)


@dataclasses.dataclass(frozen=True, slots=True)
class _DeploymentSpans:
    """What every inference span of one deployment version shares."""

    kind: Any
    model: str
    attributes: dict[str, Any]


_deployments: dict[tuple[str, str, str], _DeploymentSpans] = {}


def _of(p: _Pipeline, dep: Deployment, replica: str) -> _DeploymentSpans:
    key = (dep.name, dep.version, replica)
    found = _deployments.get(key)
    if found is not None:
        return found
    from atomr.runners.catalog import is_local

    local = is_local(dep.runtime)
    _, sep, rest = dep.model.partition("/")
    model = rest if sep and not local else dep.model  # the provider's own name for its model
    provider = PROVIDERS.get(dep.runtime, dep.runtime)
    attributes: dict[str, Any] = {
        PROVIDER: provider,
        SYSTEM: provider,
        REQUEST_MODEL: model,
        "atomr.deployment": dep.name,
        "atomr.replica": replica,
    }
    if local:
        attributes[RESPONSE_MODEL] = model  # the engine answers with the model it loaded
    else:
        base = urlsplit(str(dep.engine.get("api_base") or ""))
        if base.hostname:
            attributes["server.address"] = base.hostname
            attributes["server.port"] = base.port or (443 if base.scheme == "https" else 80)
    found = _DeploymentSpans(p.INTERNAL if local else p.CLIENT, model, attributes)
    if len(_deployments) > 1024:  # versions come and go over a long life
        _deployments.clear()
    _deployments[key] = found
    return found


def session_span(request: InferenceRequest, deployment: Deployment, replica: str) -> SessionSpan | None:
    """The inference span of `request` on `replica`, started now (None unless tracing is on)."""
    p = _tracer()
    if p is None:
        return None
    d = _of(p, deployment, replica)
    op = operation(request)
    a = dict(d.attributes)
    a[OPERATION] = op
    a["atomr.request_id"] = request.request_id
    a["atomr.tenant"] = request.tenant
    if request.task == "generate":
        params = request.params
        if params.max_tokens is not None:
            a["gen_ai.request.max_tokens"] = params.max_tokens
        if params.temperature is not None:
            a["gen_ai.request.temperature"] = params.temperature
        if params.top_p is not None:
            a["gen_ai.request.top_p"] = params.top_p
        if params.top_k is not None:
            a["gen_ai.request.top_k"] = params.top_k
        if params.seed is not None:
            a["gen_ai.request.seed"] = params.seed
        if params.stop:
            a["gen_ai.request.stop_sequences"] = tuple(params.stop)
        if params.n != 1:
            a["gen_ai.request.choice.count"] = params.n
    elif request.dimensions is not None:
        a["gen_ai.embeddings.dimension.count"] = request.dimensions
    return SessionSpan(p.start(f"{op} {d.model}", request.trace, d.kind, a))
