"""Runner host actor: one replica. Owns one ModelRunner on its sidecar loop.

Requests arrive in `Dispatch` batches from the coordinator; each becomes a session task on the
loop. Chunks are coalesced per session and sent straight to the requester, and so is a successful
final event; which requests started streaming or finished is reported to the coordinator once
per wake-up, in one message, and the coordinator forwards every final too (the copy that counts
when this process dies; callers keep whichever end arrives first).
GPU pinning happens here, before the runner class (and so its engine) is imported.

If its coordinator dies, the deployment manager starts another, which adopts the running
replicas (`AdoptReplica`): the host reports to it from then on, telling it the requests in
progress and the error finals of the last `RECENT_FINALS_S` (which may have died with the old
coordinator, the only way an error reaches its caller).

A runner host is a child process of its node agent, which supervises it. If the agent dies, the
host would live on unsupervised and out of reach of the node's shutdown: it notices that its
parent process changed and exits (the agent's successor registers again, and the coordinator
starts the replica anew).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import os
import time
from typing import Any

import structlog
from thespian.actors import ActorExitRequest

from atomr.actors.messages import (
    Address,
    AdoptReplica,
    Cancel,
    Dispatch,
    LoadRunner,
    ReplicaFailed,
    ReplicaProgress,
    ReplicaReady,
    WorkItem,
)
from atomr.actors.sidecar import SidecarActor
from atomr.core.errors import ErrorInfo, as_error_info
from atomr.core.runner import ModelRunner, PromptLimit
from atomr.core.types import InferenceRequest, StreamEvent
from atomr.runners.catalog import runner_class
from atomr.serving.session import run_session

log = structlog.get_logger("atomr.runner_host")

ORPHAN_CHECK_S = 0.2  # how often a runner host checks that its node agent is alive
RECENT_FINALS_S = 30.0  # error finals kept this long, for a coordinator that adopts this replica


class RunnerHost(SidecarActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runner: ModelRunner | None = None
        self.load_msg: LoadRunner | None = None
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.started: list[str] = []
        self.finals: list[tuple[Address, StreamEvent]] = []
        self.last_health: dict[str, Any] | None = None
        self.load_error: ErrorInfo | None = None
        # On the loop thread: requests in progress, those that sent a chunk, recent error finals
        self.items: dict[str, WorkItem] = {}
        self.streaming: set[str] = set()
        self.recent: collections.deque[tuple[float, WorkItem, StreamEvent]] = collections.deque(maxlen=4096)

    # ---- lifecycle ----

    def receiveMsg_LoadRunner(self, msg: LoadRunner, sender: Address) -> None:
        if self.load_msg is not None:
            return
        self.load_msg = msg
        if msg.gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(msg.gpu_ids)
        self.sidecar.spawn(self._watch_parent(os.getppid()))
        self.sidecar.spawn(self._load(msg))

    async def _watch_parent(self, parent: int) -> None:
        """Exit once orphaned: the node agent that started this process has died."""
        while os.getppid() == parent:
            await asyncio.sleep(ORPHAN_CHECK_S)
        replica = self.load_msg.replica_id if self.load_msg is not None else "?"
        log.error("node agent died: replica exits", replica=replica)
        self.sidecar.post(lambda: self.send(self.myAddress, ActorExitRequest()))

    async def _load(self, msg: LoadRunner) -> None:
        try:
            runner = runner_class(msg.deployment.runtime)(msg.deployment)
            await runner.load()
        except BaseException as exc:  # noqa: BLE001 - any load failure is reported, never raised
            info = as_error_info(exc)
            log.warning("replica load failed", replica=msg.replica_id, error=info.message)
            self.sidecar.post(lambda: self._load_failed(info))
            return
        self.runner = runner
        self.sidecar.post(lambda: self._ready([], []))

    def _load_failed(self, info: ErrorInfo) -> None:
        assert self.load_msg is not None
        self.load_error = info
        self.send(self.load_msg.coordinator, ReplicaFailed(self.load_msg.replica_id, info))

    def _ready(self, inflight: list[tuple[WorkItem, bool]], finals: list[tuple[WorkItem, StreamEvent]]) -> None:
        """Tell the coordinator (the current one: it may have changed while loading) we serve."""
        msg = self.load_msg
        assert msg is not None
        ready = ReplicaReady(
            msg.replica_id,
            self.myAddress,
            msg.node_id,
            os.getpid(),
            list(msg.gpu_ids),
            os.environ.get("CUDA_VISIBLE_DEVICES"),
            inflight,
            finals,
            self._prompt_limit(),
        )
        self.send(msg.coordinator, ready)

    def _prompt_limit(self) -> PromptLimit | None:
        try:
            return self.runner.prompt_limit() if self.runner is not None else None
        except Exception:  # noqa: BLE001 - only an early check is lost
            return None

    def receiveMsg_AdoptReplica(self, msg: AdoptReplica, sender: Address) -> None:
        """A new coordinator replaces a dead one: report to it from now on."""
        if self.load_msg is None or msg.replica_id != self.load_msg.replica_id:
            return
        self.load_msg = dataclasses.replace(self.load_msg, coordinator=msg.coordinator)
        log.warning("adopted by a new coordinator", replica=msg.replica_id)
        if self.load_error is not None:
            self._load_failed(self.load_error)
        elif self.runner is not None:
            self.sidecar.call_soon(self._report_adoption)
        # still loading: the new coordinator hears of it when the load ends

    def _report_adoption(self) -> None:
        """(loop thread) What the new coordinator must know: requests in progress, recent errors."""
        horizon = time.monotonic() - RECENT_FINALS_S
        while self.recent and self.recent[0][0] < horizon:
            self.recent.popleft()
        inflight = [(item, rid in self.streaming) for rid, item in self.items.items()]
        finals = [(item, event) for _, item, event in self.recent]
        self.sidecar.post(lambda: self._ready(inflight, finals))

    def on_exit(self) -> None:
        runner = self.runner
        if runner is not None and self._sidecar is not None:
            self.runner = None
            try:
                self.sidecar.spawn(self._shutdown(runner)).result(timeout=10)
            except Exception as exc:  # noqa: BLE001
                log.warning("unload failed", error=str(exc))
        super().on_exit()

    async def _shutdown(self, runner: ModelRunner) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        await runner.unload()

    # ---- requests ----

    def receiveMsg_Dispatch(self, msg: Dispatch, sender: Address) -> None:
        self.sidecar.call_soon(self._start_sessions, msg.items)

    def receiveMsg_Cancel(self, msg: Cancel, sender: Address) -> None:
        self.sidecar.call_soon(self._cancel, msg.request_ids)

    def _start_sessions(self, items: list[WorkItem]) -> None:
        for item in items:
            rid = item.request.request_id
            self.items[rid] = item
            self.tasks[rid] = asyncio.get_running_loop().create_task(self._session(item))

    def _cancel(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            task = self.tasks.get(rid)
            if task is not None:
                task.cancel()

    async def _session(self, item: WorkItem) -> None:
        assert self.load_msg is not None
        rid = item.request.request_id

        def send_chunk(event: StreamEvent) -> None:
            if event.seq == 0:
                self.streaming.add(rid)
            self._post_chunk(item.reply_to, event, first=event.seq == 0)

        try:
            msg = self.load_msg
            final = functools.partial(self._post_final, item)
            await run_session(self.runner, item.request, msg.deployment, msg.replica_id, send_chunk, final)
        finally:
            self.tasks.pop(rid, None)
            self.items.pop(rid, None)
            self.streaming.discard(rid)

    def _post_chunk(self, reply_to: Address, event: StreamEvent, first: bool) -> None:
        def deliver() -> None:
            self.emit(reply_to, event)
            if first:
                self.started.append(event.request_id)

        self.sidecar.post(deliver)

    def _post_final(self, item: WorkItem, event: StreamEvent) -> None:
        reply_to = item.reply_to
        if event.error is not None:
            now = time.monotonic()
            while self.recent and self.recent[0][0] < now - RECENT_FINALS_S:
                self.recent.popleft()
            # Only a request a fallback may still take (a retryable error before its first chunk)
            # is kept whole; of the others, what answering them takes (a refused prompt of a
            # megabyte must not stay here).
            kept = item if event.error.retryable and event.seq == 0 else answer_only(item)
            self.recent.append((now, kept, event))

        def deliver() -> None:
            if event.error is None:
                # The caller's copy of a successful end leaves with the last chunks (no extra
                # hop); the coordinator still forwards its own copy, which is what guarantees an
                # answer if this process dies now. Callers keep the first end and drop the other.
                # Errors go through the coordinator only: it may hand the request to a fallback.
                self.emit(reply_to, event)
            self.finals.append((reply_to, event))

        self.sidecar.post(deliver)

    def after_drain(self) -> None:
        # Chunks leave first, straight to their requesters; then finals and progress go to the
        # coordinator in one message (it forwards the finals).
        super().after_drain()
        if (self.started or self.finals) and self.load_msg is not None:
            health = self._health_change()
            progress = ReplicaProgress(self.load_msg.replica_id, self.started, self.finals, health)
            self.started, self.finals = [], []
            self.send(self.load_msg.coordinator, progress)

    def _health_change(self) -> dict[str, Any] | None:
        """The runner's status when it differs from what the coordinator last heard."""
        status = getattr(self.runner, "status", None)
        if status is None:
            return None
        now = status()
        if now == self.last_health:
            return None
        self.last_health = now
        return dict(now)


def answer_only(item: WorkItem) -> WorkItem:
    """`item` reduced to what sending it its final event takes: its id, model, tenant, caller."""
    req = item.request
    bare = InferenceRequest(model=req.model, prompt="", request_id=req.request_id, tenant=req.tenant, key_id=req.key_id)
    return WorkItem(bare, item.reply_to, item.hops)
