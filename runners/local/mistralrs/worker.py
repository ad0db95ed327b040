"""The one thread that owns the `mistralrs.Runner` (it is not thread-safe): it loads the model and
serves the requests one at a time, in the order they arrived.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from atomr.runners.common.context import check_context
from atomr.runners.local.mistralrs.engine import MODEL_NAME, import_mistralrs, load_error, open_runner, request_error
from atomr.runners.local.mistralrs.prompts import ChatPrompts
from atomr.runners.local.mistralrs.requests import ChatStream, Job, constraint_kwargs, message_dicts, sampling_kwargs

from atomr.core.errors import InferenceError, InternalError, UnavailableError
from atomr.core.types import Chunk, Usage


class Worker:
    """The one thread that owns the `mistralrs.Runner` and serves requests in FIFO order."""

    def __init__(self, folder: Path, arch: str | None, dtype: str, on_done: Callable[[Job], None]) -> None:
        self._folder = folder
        self._arch = arch
        self._dtype = dtype
        self._on_done = on_done
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._load_error: InferenceError | None = None
        self.context_length = 0
        self.load_seconds = 0.0
        self.prompts: ChatPrompts | None = None
        self._thread = threading.Thread(target=self._main, name="atomr-mistralrs", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the thread and wait until the model is loaded (raises the load error)."""
        self._thread.start()
        self._ready.wait()
        if self._load_error is not None:
            self._thread.join()
            raise self._load_error

    def submit(self, job: Job) -> None:
        if not self.alive:
            raise UnavailableError("the mistral.rs worker thread has stopped")
        self._inbox.put(job)

    def stop(self) -> None:
        self._inbox.put(None)
        self._thread.join()

    def _main(self) -> None:
        started = time.perf_counter()
        try:
            mr = import_mistralrs()
            runner = open_runner(mr, self._folder, self._arch, self._dtype)
            context = runner.max_sequence_length()
            if not context:
                raise InternalError(f"mistral.rs gives no maximum sequence length for {self._folder}")
            self.context_length = int(context)
            self.prompts = ChatPrompts(mr, runner, self._folder)
        except BaseException as exc:  # noqa: BLE001 - reported to load()
            self._load_error = load_error(exc, self._folder)
            self._ready.set()
            return
        self.load_seconds = time.perf_counter() - started
        self._ready.set()
        try:
            while True:
                job = self._inbox.get()
                if job is None:
                    break
                try:
                    if not job.cancel.is_set():
                        self._serve(mr, runner, job)
                except BaseException as exc:  # noqa: BLE001 - answer the caller with the engine's reason
                    guidance = job.plan.guidance
                    field = guidance.field if guidance is not None else None
                    job.out.put(request_error(exc, job.request, self.context_length, field))
                self._on_done(job)
        finally:
            while True:  # stopping: whatever is still queued gets an answer
                try:
                    job = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job.out.put(UnavailableError("the mistral.rs runner was unloaded"))
                    self._on_done(job)
            del runner

    def _serve(self, mr: Any, runner: Any, job: Job) -> None:
        request = job.request
        kwargs = sampling_kwargs(request.params)
        if request.messages is None:
            self._serve_completion(mr, runner, job, kwargs)
            return
        messages = message_dicts(request.messages)
        constraint = constraint_kwargs(job.plan)
        tools = [t.to_openai() for t in job.plan.template_tools] if "tool_schemas" in constraint else None
        assert self.prompts is not None
        n_prompt = self.prompts.count(messages, tools)
        check_context(request, n_prompt, self.context_length)
        if job.cancel.is_set():
            return
        stream: Any = runner.send_chat_completion_request(
            mr.ChatCompletionRequest(
                model=MODEL_NAME,
                messages=messages,
                stream=True,
                logprobs=request.params.logprobs,
                **kwargs,
                **constraint,
            )
        )
        decoding = ChatStream(job, n_prompt)
        try:
            for response in stream:
                # The caller left: return, dropping the stream; mistral.rs cancels the sequence when
                # it next fails to send.
                if job.cancel.is_set() or decoding.feed(response):
                    return
        finally:
            stream = None
        if not job.finished:
            raise InternalError("mistral.rs ended the stream without a finish reason")

    def _serve_completion(self, mr: Any, runner: Any, job: Job, kwargs: dict[str, Any]) -> None:
        request = job.request
        prompt = request.prompt or ""
        n_prompt = len(runner.tokenize_text(prompt, True, None))  # BOS included, as mistral.rs feeds it
        check_context(request, n_prompt, self.context_length)
        if job.cancel.is_set():
            return
        stops = list(request.params.stop)
        result = runner.send_completion_request(
            mr.CompletionRequest(model=MODEL_NAME, prompt=prompt, stop_seqs=stops or None, **kwargs)
        )
        choice = result.choices[0]
        reason = choice.finish_reason
        if reason not in ("stop", "length"):
            raise InternalError(f"mistral.rs ended the completion with finish_reason {reason!r}")
        n = int(result.usage.completion_tokens)
        if reason == "stop" and not stops:  # ended on EOS, which mistral.rs counts
            n -= 1
        job.generated = max(0, n)
        text = choice.text or ""
        job.finished = True
        job.out.put(Chunk(text, job.generated, None, reason, Usage(n_prompt, job.generated)))
