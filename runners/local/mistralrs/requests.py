"""One request's side of the mistral.rs runner: its `Job` and the `Handoff` that carries chunks
from the worker thread to the asyncio side, atomr's sampling parameters as mistral.rs request
fields (`sampling_kwargs`), and a streamed chat's responses as atomr chunks (`ChatStream`: stop
sequences, logprobs, token counts).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from atomr.runners.common.penalties import penalty_kwargs
from atomr.runners.common.stops import StopMatcher
from atomr.runners.common.structured import PLAIN, OutputPlan

from atomr.core.errors import InternalError
from atomr.core.types import Chunk, InferenceRequest, Message, SamplingParams, TokenLogprob, Usage


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Request fields for mistral.rs from atomr's sampling parameters (both request kinds take them).

    Every sampling field is explicit so that the model's generation_config.json cannot replace it:
    mistral.rs fills only the fields a request leaves unset (with `do_sample: false` it would set
    top_k=1 and make any temperature greedy). temperature 0 is greedy in mistral.rs (below 1e-7);
    top_k 0 means no top-k there too. There is no per-request seed. Penalties and logit_bias
    (token id -> bias) are passed when the caller set them.
    """
    out: dict[str, Any] = {
        "max_tokens": params.max_new_tokens,
        "temperature": params.sampling[0],
        "top_p": params.sampling[1],
        "top_k": params.sampling[2],
        "min_p": 0.0,
        **penalty_kwargs(params),
    }
    return out


def constraint_kwargs(plan: OutputPlan) -> dict[str, Any]:
    """mistral.rs request fields for a plan: its guidance as a grammar (mistral.rs's llguidance
    takes JSON schemas, regexes and lark grammars), and the tools its chat template renders."""
    out: dict[str, Any] = {}
    g = plan.guidance
    if g is not None:
        out["grammar"] = g.data
        out["grammar_type"] = {"json_schema": "json_schema", "regex": "regex"}.get(g.kind, "lark")
    if plan.tools_mode == "auto" and plan.template_tools:
        out["tool_schemas"] = [json.dumps(t.to_openai()) for t in plan.template_tools]
    return out


def message_dicts(messages: Sequence[Message]) -> list[dict[str, Any]]:
    return [m.for_template() for m in messages]


class Handoff:
    """Worker thread -> the asyncio task reading one request, through an asyncio.Queue."""

    __slots__ = ("_loop", "_queue")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    def put(self, item: Any) -> None:
        """Callable from any thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is reading any more
            pass

    async def get(self) -> Any:
        return await self._queue.get()


END = object()


@dataclass(slots=True, eq=False)
class Job:
    request: InferenceRequest
    out: Handoff
    plan: OutputPlan = PLAIN  # guidance and tools (`atomr.runners.common.structured`)
    cancel: threading.Event = field(default_factory=threading.Event)
    generated: int = 0  # completion tokens produced so far (EOS not counted)
    finished: bool = False  # the final chunk was handed over


class ChatStream:
    """One chat request's text side: stop matcher, logprobs, counts; emits the chunks."""

    __slots__ = ("job", "logprobs", "n_prompt", "stops")

    def __init__(self, job: Job, n_prompt: int) -> None:
        self.job = job
        self.n_prompt = n_prompt
        self.stops = StopMatcher(job.request.params.stop)
        self.logprobs = job.request.params.logprobs

    def _lps(self, lp: Any, n: int) -> tuple[TokenLogprob, ...] | None:
        if not self.logprobs:
            return None
        if lp is None or n == 0:
            return ()
        return (TokenLogprob(str(lp.token), float(lp.logprob)),)

    def feed(self, response: Any) -> bool:
        """Handle one mistral.rs chunk response; True when the request is finished."""
        job = self.job
        choice = response.choices[0]
        piece = choice.delta.content or ""
        reason = choice.finish_reason
        if reason is None:  # one generated token
            job.generated += 1
            text, stopped = self.stops.feed(piece)
            lps = self._lps(choice.logprobs, 1)
            if stopped:
                self._final(Chunk(text, 1, lps, "stop", Usage(self.n_prompt, job.generated)))
                return True
            job.out.put(Chunk(text, 1, lps))
            return False
        if reason not in ("stop", "length"):
            raise InternalError(f"mistral.rs ended the generation with finish_reason {reason!r}")
        # The last response: with "length" it carries the last token; with "stop" it stands for
        # EOS, which mistral.rs counts and atomr does not. Counting from mistral.rs's usage also
        # covers tokens that got no chunk of their own (a split UTF-8 character).
        eos = 1 if reason == "stop" else 0
        usage = response.usage
        total = int(usage.completion_tokens) - eos if usage is not None else job.generated + 1 - eos
        n = max(0, total - job.generated)
        job.generated += n
        text, stopped = self.stops.feed(piece)
        if not stopped:
            text += self.stops.flush()
        lps = self._lps(choice.logprobs if n else None, n)
        self._final(Chunk(text, n, lps, "stop" if stopped else reason, Usage(self.n_prompt, job.generated)))
        return True

    def _final(self, chunk: Chunk) -> None:
        self.job.finished = True
        self.job.out.put(chunk)
