"""The Python client: one call reaches any deployed model, local engine or remote API.

A `Client` connects to a running node as an external Thespian endpoint. Requests are sent to the
gateway (requests queued by several threads at once leave in one message); answers arrive on a
second, private endpoint read by one background thread, which hands each request's events to
its caller. Failures raise the matching `InferenceError` subclass.

Frames are signed with the cluster key (``atomr.cluster.auth``): `cluster_key_file` or
`cluster_key`, else ``$ATOMR_CLUSTER_KEY_FILE`` / ``$ATOMR_CLUSTER_KEY``, else (for a node on
loopback) the per-user default key. A node that refuses the key raises `AuthError` at once.

A gateway or a coordinator process may die holding requests (Thespian drops messages to a dead
actor without telling the sender). While a request has heard nothing, the client checks, at most
once per `CHECK_S`, that neither was replaced since it was sent: it looks its gateway up again by
global name (Thespian frees the name of a dead actor, so the lookup finds or starts its
successor) and asks the registry when the coordinator of the request's deployment started (a
route's `since`). A request sent before either (or within `SETTLE_S` after, while the news
spreads) is sent again, marked as resent, so that a
coordinator already serving it ignores the copy. (A route or cascade name has no coordinator of
its own: only its gateway is checked.)

Given several heads (``"h1:p1,h2:p2"``: a head and its standbys), the client talks to the one that
answers, and moves to another when that one is gone and another answers (a standby that took
over): a new endpoint, gateway and manager, and its waiting requests are sent again there.

From a host that runs no node, the process becomes a light member of the head's convention
(`atomr.cluster.light_member`: started on first use, shared by the process's clients, stopped
by the last one to close) and learns the addresses of the head's actors from a portal placed on
the head (`atomr.actors.portal`); everything else is the same.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from thespian.actors import ActorSystemFailure

from atomr.actors.messages import (
    GATEWAY_NAME,
    KEYS_NAME,
    MANAGER_NAME,
    METRICS_NAME,
    REGISTRY_NAME,
    Cancel,
    Deploy,
    Events,
    GetMetrics,
    GetRoutes,
    GetStatus,
    Hello,
    HelloReply,
    KeysAdmin,
    ListDeployments,
    Locate,
    Reply,
    SetPolicies,
    SpendTotals,
    Submit,
    Undeploy,
    WorkItem,
    reply_value,
)
from atomr.actors.portal import Portal, actor_class
from atomr.cluster import light_member
from atomr.cluster.light_member import is_this_host
from atomr.cluster.system import check_node, connect_system, disconnect_system
from atomr.config import deployment_from_dict, load_deployments, load_policies
from atomr.core.deployment import Deployment
from atomr.core.errors import InferenceError, InvalidRequestError, UnavailableError
from atomr.core.messages import (
    ResponseFormat,
    Tool,
    ToolChoice,
    response_format_from_openai,
    tool_choice_from_openai,
    tools_from_openai,
)
from atomr.core.policies import Policies, policies_from_config
from atomr.core.status import DeploymentInfo
from atomr.core.types import (
    Chunk,
    InferenceRequest,
    InferenceResult,
    Message,
    SamplingParams,
    StreamEvent,
    Usage,
    make_messages,
)
from atomr.serving.stream_assembly import StreamAssembler, assemble_result

log = structlog.get_logger("atomr.client")

DEFAULT_PORT = 19500
ADDRESS_ENV = "ATOMR_ADDRESS"
CHECK_S = 1.0  # a request that heard nothing for this long has its gateway and coordinator checked
# Gateways learn of a replaced coordinator moments after it started: a request sent that soon
# after may still have gone to the dead one.
SETTLE_S = 1.0


def parse_heads(address: str | None) -> list[tuple[str, int]]:
    """Every head of a comma-separated address (one for a plain HOST:PORT)."""
    text = address or os.environ.get(ADDRESS_ENV) or f"127.0.0.1:{DEFAULT_PORT}"
    return [parse_address(part.strip()) for part in text.split(",") if part.strip()]


def parse_address(address: str | None) -> tuple[str, int]:
    """'host:port', ':port' or 'port' (default from $ATOMR_ADDRESS, else 127.0.0.1:19500); of
    several, comma-separated (a head and its standbys), the first that answers: a standby is not
    reachable at its address until it leads."""
    text = address or os.environ.get(ADDRESS_ENV) or f"127.0.0.1:{DEFAULT_PORT}"
    if "," in text:
        heads = parse_heads(text)
        from atomr.cluster.system import port_open

        return next((h for h in heads if port_open(*h)), heads[0])
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise UnavailableError(f"bad node address {text!r}; expected HOST:PORT", field="address") from None


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """What `Client.embed` returns: one vector per input, in order, and where they were made."""

    vectors: list[list[float]]
    usage: Usage  # the inputs' tokens, as prompt_tokens
    model: str
    deployment: str
    request_id: str


class Client:
    """Connect to the atomr node at `address` ("host:port")."""

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout: float = 300.0,
        gateway: str | None = None,
        cluster_key_file: str | Path | None = None,
        cluster_key: str | bytes | None = None,
    ) -> None:
        """`gateway` names a gateway process of its own (started on first use) instead of the default.

        `cluster_key_file` / `cluster_key`: the cluster's key (see the module docstring). A process
        uses one key at a time: a client given another key switches the whole process to it.
        """
        self.host, self.port = parse_address(address)
        self._heads = parse_heads(address)  # a head and its standbys: the client moves to the leader
        self.default_timeout = timeout
        from atomr.cluster.auth import resolve_key

        key = resolve_key(self.host, key_file=cluster_key_file, key=cluster_key)
        self._key = key
        self._generation = 0  # which connection the reader serves (one more at each move)
        self._remote = False  # the node is on another host: this process is a light member
        self._asys = self._connect(self.host, self.port)
        self._gateway_name = gateway or GATEWAY_NAME
        try:
            found = self._find(self._gateway_name, MANAGER_NAME)
        except BaseException:
            self._disconnect(self._asys)
            raise
        self._gateway = found[self._gateway_name]
        self._gateway_since = 0.0  # when the gateway in use was found to replace a dead one (time.time())
        self._gateway_checked = time.monotonic()
        self._check_lock = threading.Lock()
        self._registry: Any = None
        self._coordinator_since: dict[str, tuple[float, float]] = {}  # model -> (checked, route.since)
        self._manager = found[MANAGER_NAME]
        self._send_lock = threading.Lock()
        self._outgoing: collections.deque[WorkItem] = collections.deque()
        self._streams: dict[str, queue.SimpleQueue[StreamEvent]] = {}
        self._closed = threading.Event()
        self._reply_to: Any = None
        if not self._start_reader():
            self.close()
            raise UnavailableError(f"the node at {self.host}:{self.port} did not answer")

    # ---- lifecycle ----

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._reader.join(5)
        for q in list(self._streams.values()):
            q.put(StreamEvent("", error=UnavailableError("client closed").info(), final=True))
        self._disconnect(self._asys)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- where the node is ----

    def _connect(self, host: str, port: int) -> Any:
        """An actor system to talk to the node at `host`:`port` through: the node's own on this
        host, else a light member of its convention (a wrong cluster key: AuthError at once)."""
        if is_this_host(host):
            self._remote = False
            return connect_system(port, host, cluster_key=self._key)
        check_node(host, port, self._key)
        self._remote = True
        return light_member.acquire(host, port, self._key)

    def _disconnect(self, asys: Any) -> None:
        if self._remote:
            light_member.release(asys)
        else:
            disconnect_system(asys)

    def _find(self, *names: str, asys: Any = None) -> dict[str, Any]:
        """The addresses of the head's global actors `names` (by global name on its host, else
        from a portal placed on the head)."""
        asys = asys if asys is not None else self._asys
        if not self._remote:
            return {name: asys.createActor(actor_class(name), globalName=name) for name in names}
        deadline = time.monotonic() + light_member.JOIN_TIMEOUT_S
        while True:  # the light member learns the head's capabilities when it has joined
            try:
                portal = asys.createActor(Portal, targetActorRequirements={"atomr.role": "head"})
                break
            except Exception as exc:  # noqa: BLE001 - Thespian's "no compatible system" until joined
                if time.monotonic() > deadline:
                    raise UnavailableError(
                        f"the head at {self.host}:{self.port} did not take this host into its cluster within"
                        f" {light_member.JOIN_TIMEOUT_S:g} s ({type(exc).__name__}); can it reach this host's"
                        f" address {light_member.local_address_towards(self.host, self.port)}?"
                    ) from None
                time.sleep(0.2)
        with asys.private() as endpoint:
            reply = endpoint.ask(portal, Locate(list(names)), 30)
        found: dict[str, Any] = reply_value(reply, "Locate", 30)
        return found

    def _start_reader(self) -> bool:
        """Start the thread that reads this connection's endpoint; whether the gateway answered."""
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, args=(ready,), name="atomr-client", daemon=True)
        self._reader.start()
        return ready.wait(30) and self._reply_to is not None

    def _read_loop(self, ready: threading.Event) -> None:
        generation = self._generation
        with self._asys.private() as endpoint:
            reply = endpoint.ask(self._gateway, Hello(), 20)
            if isinstance(reply, HelloReply):
                self._reply_to = reply.address
            ready.set()
            while not self._closed.is_set() and generation == self._generation:
                try:
                    msg = endpoint.listen(0.2)
                except Exception as exc:  # noqa: BLE001 - a bad frame must not stop every stream
                    log.warning("client endpoint error", error=f"{type(exc).__name__}: {exc}")
                    continue
                if isinstance(msg, Events):
                    for ev in msg.events:
                        q = self._streams.get(ev.request_id)
                        if q is not None:
                            q.put(ev)

    # ---- inference ----

    def generate(
        self,
        model: str,
        messages: Iterable[Mapping[str, Any] | Message] | str | None = None,
        *,
        prompt: str | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> InferenceResult:
        """Generate a whole answer. `messages` (chat) or `prompt` (completion)."""
        request = self.make_request(model, messages, prompt=prompt, timeout=timeout, stream=False, **params)
        return self.generate_request(request)

    def generate_request(self, request: InferenceRequest) -> InferenceResult:
        """Send a prepared request (validated again by the gateway) and return its answer."""
        return _collect(request, self._events(request))

    def embed(
        self,
        model: str,
        inputs: str | Sequence[str],
        *,
        dimensions: int | None = None,
        user: str | None = None,
        timeout: float | None = None,
        tenant: str = "default",
        priority: int = 0,
    ) -> EmbeddingResult:
        """The embeddings of `inputs` (one text or several, all in one request) by the deployment
        `model`; `dimensions`: shorter vectors, where its runtime makes them."""
        request = InferenceRequest(
            model=model,
            task="embed",
            inputs=(inputs,) if isinstance(inputs, str) else tuple(inputs),
            dimensions=dimensions,
            user=user,
            tenant=tenant,
            priority=priority,
            deadline=time.time() + (timeout or self.default_timeout),
        )
        request.validate()
        result = self.generate_request(request)
        return EmbeddingResult(result.vectors(), result.usage, result.model, result.deployment, result.request_id)

    def generate_many(self, requests: list[InferenceRequest]) -> list[InferenceResult | InferenceError]:
        """Send several requests in one message; each gets its result or its error, in order."""
        streams = [self._events(r, send=False) for r in requests]
        for it in streams:
            next(it)  # registers the request's queue
        self._send_many([WorkItem(r, self._reply_to) for r in requests])
        out: list[InferenceResult | InferenceError] = []
        for request, it in zip(requests, streams, strict=True):
            try:
                out.append(_collect(request, it))
            except InferenceError as exc:
                out.append(exc)
        return out

    def stream(
        self,
        model: str,
        messages: Iterable[Mapping[str, Any] | Message] | str | None = None,
        *,
        prompt: str | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> ChunkStream:
        """Iterate over chunks as they are generated; the last one has finish_reason and usage."""
        request = self.make_request(model, messages, prompt=prompt, timeout=timeout, stream=True, **params)
        return ChunkStream(request, self._events(request))

    def make_request(
        self,
        model: str,
        messages: Iterable[Mapping[str, Any] | Message] | str | None = None,
        *,
        prompt: str | None = None,
        timeout: float | None = None,
        stream: bool = False,
        tenant: str = "default",
        priority: int = 0,
        wait_for_rate_limit: bool = False,
        tools: Iterable[Mapping[str, Any] | Tool] | None = None,
        tool_choice: str | Mapping[str, Any] | ToolChoice | None = None,
        parallel_tool_calls: bool | None = None,
        response_format: Mapping[str, Any] | ResponseFormat | None = None,
        reasoning_effort: str | None = None,
        user: str | None = None,
        metadata: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> InferenceRequest:
        """Build and validate a request (raises InvalidRequestError naming the field).

        Messages, `tools`, `tool_choice` and `response_format` are taken as OpenAI's dicts or as
        atomr's values; sampling parameters (`max_tokens`, `temperature`, `n`, ...) are those of
        `SamplingParams` (`max_completion_tokens` is `max_tokens`); `extra_body`: more fields, as
        sent, for OpenAI-wire runtimes (the others refuse them by name).
        """
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if "max_completion_tokens" in params:
            params["max_tokens"] = params.pop("max_completion_tokens")
        unknown = set(params) - set(SamplingParams.__dataclass_fields__)
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidRequestError(f"{name} is not a known parameter", field=name)
        if "stop" in params:
            stop = params["stop"]
            params["stop"] = (stop,) if isinstance(stop, str) else tuple(stop or ())
        tool_list = tools_from_openai(
            [t.to_openai() if isinstance(t, Tool) else t for t in tools] if tools is not None else None
        )
        if isinstance(tool_choice, ToolChoice):
            tool_choice = tool_choice.to_openai()
        if isinstance(response_format, ResponseFormat):
            response_format = response_format.to_openai()
        request = InferenceRequest(
            model=model,
            messages=make_messages(messages) if messages is not None else None,
            prompt=prompt,
            params=SamplingParams(**params),
            tenant=tenant,
            priority=priority,
            deadline=time.time() + (timeout or self.default_timeout),
            stream=stream,
            wait_for_rate_limit=wait_for_rate_limit,
            tools=tool_list,
            tool_choice=tool_choice_from_openai(tool_choice, tool_list),
            parallel_tool_calls=parallel_tool_calls,
            response_format=response_format_from_openai(response_format),
            reasoning_effort=reasoning_effort,
            user=user,
            metadata=metadata,
            extra=dict(extra_body) if extra_body else None,
        )
        request.validate()
        return request

    def _events(self, request: InferenceRequest, send: bool = True) -> Iterator[StreamEvent]:
        """Send `request`; yield its events until the final one (raising its error).

        With send=False the first `next()` only registers the request (yielding a placeholder)
        and the caller sends it, so that many requests can leave in one message.
        """
        rid = request.request_id
        q: queue.SimpleQueue[StreamEvent] = queue.SimpleQueue()
        self._streams[rid] = q
        assembler = StreamAssembler(rid)
        try:
            if send:
                self._send_many([WorkItem(request, self._reply_to)])
            else:
                yield StreamEvent(rid)
            sent_at = time.time()
            heard = False
            deadline = request.deadline or (time.time() + self.default_timeout)
            while True:
                wait = assembler.wait_time(deadline - time.time())
                checking = not heard and wait > CHECK_S
                try:
                    ev = q.get(timeout=CHECK_S if checking else wait)
                except queue.Empty:
                    if checking:
                        if self._replaced_at(request.model) + SETTLE_S > sent_at:  # what held it may have died
                            sent_at = time.time()
                            self._send_many([WorkItem(request, self._reply_to, resent=True)])
                        continue
                    steps = [assembler.on_timeout()]
                else:
                    heard = True
                    steps = assembler.on_event(ev)
                for step in steps:
                    if step.resend:
                        self._send_many([WorkItem(request, self._reply_to, resent=True)])
                    elif step.error is not None:
                        raise step.error
                    elif step.event is not None:
                        yield step.event
                        if step.final:
                            return
        finally:
            self._streams.pop(rid, None)
            if not assembler.finished and not self._closed.is_set():
                self._tell(Cancel([rid], request.model))

    def _send_many(self, items: list[WorkItem]) -> None:
        # Threads that queue while another holds the lock have their items sent by that thread.
        self._outgoing.extend(items)
        with self._send_lock:
            batch = []
            while self._outgoing:
                batch.append(self._outgoing.popleft())
            if batch:
                self._to_gateway(Submit(batch))

    def _to_gateway(self, msg: Any) -> None:
        """Send `msg` to the gateway (holding the send lock); to its successor if it is dead."""
        for attempt in range(3):
            try:
                self._asys.tell(self._gateway, msg)
                return
            except ActorSystemFailure as exc:  # the gateway's process is gone
                log.warning("gateway unreachable", error=str(exc))
                if attempt:
                    time.sleep(0.1 * attempt)  # Thespian frees the dead actor's name within moments
                self._lookup_gateway()
        # Still unreachable: requests wait for their next check (or their deadline).

    def _lookup_gateway(self) -> None:
        """Find the gateway by its global name again (holding the send lock)."""
        self._gateway_checked = time.monotonic()
        try:
            address = self._find(self._gateway_name)[self._gateway_name]
        except Exception as exc:  # noqa: BLE001 - the node may be restarting: try again later
            log.warning("gateway lookup failed", error=f"{type(exc).__name__}: {exc}")
            self._move_to_leader()
            return
        if address != self._gateway:
            log.warning("gateway replaced", gateway=self._gateway_name, new=str(address))
            self._gateway, self._gateway_since = address, time.time()

    def _move_to_leader(self) -> bool:
        """Given several heads, when the one this client talks to is gone and another answers
        (a standby that took over), connect to that one (holding the send lock): a new endpoint,
        gateway and manager; requests still waiting are sent again to it by their own checks."""
        from atomr.cluster.system import port_open

        if len(self._heads) < 2 or port_open(self.host, self.port):
            return False
        for host, port in self._heads:
            if (host, port) == (self.host, self.port) or not port_open(host, port):
                continue
            old_remote = self._remote
            try:
                asys = self._connect(host, port)
                found = self._find(self._gateway_name, MANAGER_NAME, asys=asys)
                gateway, manager = found[self._gateway_name], found[MANAGER_NAME]
            except Exception as exc:  # noqa: BLE001 - not leading yet: the next check tries again
                log.warning("the next head did not answer yet", head=f"{host}:{port}", error=str(exc))
                if "asys" in locals():  # connected, but the head's actors did not answer
                    self._disconnect(asys)
                self._remote = old_remote
                continue
            old, new_remote, self._remote = self._asys, self._remote, old_remote
            self._generation += 1  # the reader of the old connection stops
            self._reader.join(5)
            self._asys, self._gateway, self._manager, self._registry = asys, gateway, manager, None
            self.host, self.port = host, port
            self._start_reader()
            self._gateway_since = time.time()  # what was sent before may be lost: send it again
            self._coordinator_since.clear()
            self._disconnect(old)
            self._remote = new_remote
            log.warning("moved to the head that leads now", head=f"{host}:{port}")
            return True
        return False

    def _replaced_at(self, model: str) -> float:
        """When the gateway, or the coordinator serving `model`, last replaced a dead one.

        (time.time(); 0 when never.) Requests sent before then may have died with it. Each is
        checked at most once per CHECK_S.
        """
        with self._check_lock:
            if self._closed.is_set():
                return 0.0
            now = time.monotonic()
            if now - self._gateway_checked >= CHECK_S:
                with self._send_lock:
                    self._lookup_gateway()
            checked, since = self._coordinator_since.get(model, (0.0, 0.0))
            if now - checked >= CHECK_S:
                since = self._route_since(model, since)
                self._coordinator_since[model] = (time.monotonic(), since)
            return max(self._gateway_since, since)

    def _route_since(self, model: str, known: float) -> float:
        """When the coordinator of `model`'s deployment started, as the registry says."""
        try:
            if self._registry is None:
                with self._send_lock:
                    self._registry = self._find(REGISTRY_NAME)[REGISTRY_NAME]
            with self._asys.private() as endpoint:
                reply = endpoint.ask(self._registry, GetRoutes([model]), 2)
            route = reply.value.get(model) if isinstance(reply, Reply) and reply.ok else None
        except Exception as exc:  # noqa: BLE001 - the registry may be busy: keep what is known
            log.warning("route lookup failed", model=model, error=f"{type(exc).__name__}: {exc}")
            return known
        return float(route.since) if route is not None else known

    def _tell(self, msg: Any) -> None:
        with self._send_lock:
            self._to_gateway(msg)

    # ---- administration ----

    def deploy(
        self,
        deployment: Deployment | Mapping[str, Any] | str | Path,
        *,
        wait: bool = True,
        timeout: float = 300.0,
        progress: Callable[[DeploymentInfo], None] | None = None,
    ) -> list[DeploymentInfo]:
        """Deploy a Deployment, a mapping, or every deployment in a YAML file.

        Deploying a new version of a serving deployment switches to it without dropping a request
        (or rolls it back, raising the reason). While waiting, `progress` is called with the
        deployment's status whenever it changes (replicas ready, version switch phase).
        """
        policies = Policies()
        if isinstance(deployment, Deployment):
            deps = [deployment]
        elif isinstance(deployment, Mapping):
            deps = [deployment_from_dict(deployment)]
        else:
            deps = load_deployments(deployment)
            policies = load_policies(deployment, deps)  # a file's routes and cascades, checked first
        out = []
        for d in deps:
            stop = threading.Event()
            watcher = None
            if progress is not None and wait:
                watcher = threading.Thread(target=self._watch, args=(d.name, progress, stop), daemon=True)
                watcher.start()
            try:
                out.append(self._admin(Deploy(d, wait), timeout))
            finally:
                stop.set()
                if watcher is not None:
                    watcher.join(5)
        if policies:
            self.set_policies(policies)
        return out

    def set_policies(self, policies: Policies | Mapping[str, Any] | str | Path) -> list[str]:
        """Add or replace routes and cascades (a `Policies`, a config mapping, or a YAML file).

        Returns every route and cascade name the cluster now holds.
        """
        if isinstance(policies, Mapping):
            policies = policies_from_config(policies)
        elif not isinstance(policies, Policies):
            policies = load_policies(policies)
        registry = self._find(REGISTRY_NAME)[REGISTRY_NAME]
        names: list[str] = self._admin(SetPolicies(policies), 30, to=registry)
        return names

    def _watch(self, name: str, progress: Callable[[DeploymentInfo], None], stop: threading.Event) -> None:
        last: tuple[Any, ...] | None = None
        while not stop.wait(0.1):
            try:
                infos = [i for i in self.list_deployments() if i.name == name]
            except InferenceError:
                continue
            for info in infos:
                seen = (info.state, info.version, info.swap, tuple((r.replica_id, r.state) for r in info.replicas))
                if seen != last:
                    last = seen
                    progress(info)

    def undeploy(self, name: str, *, wait: bool = True, timeout: float = 300.0) -> DeploymentInfo:
        """Remove a deployment: no new requests, in-flight ones finish, then replicas exit."""
        result: DeploymentInfo = self._admin(Undeploy(name, wait), timeout)
        return result

    def list_deployments(self) -> list[DeploymentInfo]:
        result: list[DeploymentInfo] = self._admin(ListDeployments(), 30)
        return result

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._admin(GetStatus(), 30)
        return result

    def metrics(self) -> str:
        """The cluster's Prometheus metrics (text exposition), as the head's /metrics serves them."""
        collector = self._find(METRICS_NAME)[METRICS_NAME]
        text: bytes = self._admin(GetMetrics(), 30, to=collector)
        return text.decode()

    def keys_admin(self, op: str, admin_key: str | None, timeout: float = 30.0, **args: Any) -> Any:
        """An admin operation on runtime keys or spend (`op`: create, list, show, revoke, rotate,
        spend; `args` as the admin API takes them), authenticated with the admin key."""
        return self._admin(KeysAdmin(op, args, admin_key), timeout, to=self._key_keeper())

    def spend_totals(self, timeout: float = 30.0) -> dict[str, list[dict[str, Any]]]:
        """What the spend log sums by tenant and by deployment (no admin key needed)."""
        result: dict[str, list[dict[str, Any]]] = self._admin(SpendTotals(), timeout, to=self._key_keeper())
        return result

    def _key_keeper(self) -> Any:
        return self._find(KEYS_NAME)[KEYS_NAME]

    def _admin(self, msg: Any, timeout: float, to: Any = None) -> Any:
        if to is None and len(self._heads) > 1:
            with self._send_lock:
                self._move_to_leader()
        with self._asys.private() as endpoint:
            reply = endpoint.ask(to if to is not None else self._manager, msg, timeout)
            if reply is None and to is None:  # the manager's process died (or the whole head was
                # started again): its global name finds or starts its successor
                self._manager = self._find(MANAGER_NAME)[MANAGER_NAME]
                reply = endpoint.ask(self._manager, msg, timeout)
        return reply_value(reply, type(msg).__name__, timeout)


class ChunkStream:
    """Chunks of one streaming request, with where it ran once known. `close()` cancels it."""

    def __init__(self, request: InferenceRequest, events: Iterator[StreamEvent]) -> None:
        self.request_id = request.request_id
        self.deployment = ""
        self.version = ""
        self.replica = ""
        self.tier = 0  # the cascade tier that answered (0 outside cascades)
        self._events = events

    def __iter__(self) -> ChunkStream:
        return self

    def __next__(self) -> Chunk:
        while True:
            ev = next(self._events)
            if ev.replica:
                self.deployment, self.version, self.replica = ev.deployment, ev.version, ev.replica
                self.tier = ev.tier
            if ev.chunk is not None:
                return ev.chunk

    def close(self) -> None:
        close = getattr(self._events, "close", None)
        if close is not None:
            close()


def _collect(request: InferenceRequest, events: Iterator[StreamEvent]) -> InferenceResult:
    """The whole answer from a request's events (raises the request's error)."""
    chunks: list[Chunk] = []
    last = StreamEvent(request.request_id)
    for ev in events:
        if ev.chunk is not None:
            chunks.append(ev.chunk)
        last = ev
    return assemble_result(request, chunks, last)
