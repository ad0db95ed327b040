"""The runner contract, written once: what every `ModelRunner` does, whatever its engine.

In the style of LiteLLM's provider test base classes: `RunnerContract` holds the tests,
`RemoteRunnerContract` adds those of remote APIs (error mapping, retries, the breaker, keys), and
each runtime supplies a small `RuntimeAdapter` (adapters.py: how to build its deployment, start
its fake or check its engine, what it declares). test_contract.py makes one test class per
runtime from the two. A runtime whose engine is not installed skips with the reason, or fails
where `$ATOMR_REQUIRE_ENGINES` names it (`tests.conftest.require_engine`).

Every test runs its coroutines on the class's own event loop (`on`), where the runner was loaded
once (vLLM binds a runner to the loop that loaded it). Tests wait on events (a generation count
back to zero, the fake seeing a stream end), never on timing; time bounds are safety limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import importlib
import itertools
import logging
import math
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import pytest
from atomr.runners.catalog import runner_class, spec_of

from atomr.core.errors import AuthError, ContextLengthError, InferenceError, InvalidRequestError
from atomr.core.runner import ModelRunner, RunnerCapabilities, check_supported
from atomr.core.types import Chunk, InferenceRequest
from atomr.core.vectors import unpack_vector
from tests.conftest import require_engine
from tests.local_support import keep_trying
from tests.remote_support import FAST_RETRY, NO_RETRY, assert_key_hidden, assert_key_nowhere, load, new_key
from tests.runners.support import (
    check_stream,
    collect,
    leave_after_first_chunk,
    logprobs_of,
    outcome,
    text,
    through_session,
)

T = TypeVar("T")
MODES = ("chat", "completion")
On = Callable[[Coroutine[Any, Any, T]], T]


@dataclass(frozen=True)
class Answer:
    """A request and the whole answer the runtime gives it (greedy, or the fake's reply)."""

    request: InferenceRequest
    text: str
    prompt_tokens: int | None = None  # when known beforehand


def with_params(request: InferenceRequest, **params: Any) -> InferenceRequest:
    return dataclasses.replace(request, params=dataclasses.replace(request.params, **params))


def streamed(request: InferenceRequest) -> InferenceRequest:
    return dataclasses.replace(request, stream=True)


class RuntimeAdapter:
    """What one runtime supplies to the contract. Subclasses set the class attributes and
    implement the hooks that raise NotImplementedError."""

    runtime: ClassVar[str]  # its name in the catalog
    runner_path: ClassVar[str]  # "module:Class" of the runner the catalog must name
    capabilities: ClassVar[RunnerCapabilities]  # what the runner must declare
    local: ClassVar[bool]
    imports_package: ClassVar[bool] = False  # importing the runner module imports its package
    no_seed: ClassVar[str | None] = None  # why a seed cannot make sampling reproducible (None: it does)
    seed_changes_text: ClassVar[bool] = True  # other seeds sample other texts
    logprob_modes: ClassVar[frozenset[str]] = frozenset(MODES)  # where asked-for logprobs come
    streamed_modes: ClassVar[frozenset[str]] = frozenset(MODES)  # answered in several chunks
    one_token_per_chunk: ClassVar[bool] = True  # (in streamed modes)
    concurrency: ClassVar[int] = 8
    known_issues: ClassVar[dict[str, str]] = {}  # test name -> the runner bug it shows (strict xfail)

    def one_per_chunk(self, mode: str) -> bool:
        """Whether every chunk of a `mode` answer carries at most one token."""
        return self.one_token_per_chunk and mode in self.streamed_modes

    def require(self) -> None:
        """Skip (or fail, where CI requires it) when the runtime's package is missing."""
        spec = spec_of(self.runtime)
        try:
            require_engine(spec.package, spec.extra)
        except ModuleNotFoundError:  # a parent package missing (google.genai without google)
            require_engine(spec.package.partition(".")[0], spec.extra)

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """Set for as long as the runner is loaded (keys, thread pins)."""
        yield

    async def start(self) -> ModelRunner:
        raise NotImplementedError

    async def stop(self, runner: ModelRunner) -> None:
        await runner.unload()

    def fresh(self) -> None:
        """Before every test: forget what the last one did (a fake's calls and knobs)."""

    def request(self, mode: str, *, prompt: str | None = None, **params: Any) -> InferenceRequest:
        """The runtime's usual chat or completion request (`prompt`: another user text)."""
        raise NotImplementedError

    def answers(self, mode: str) -> list[Answer]:
        """Requests whose whole answers are known; the first is the usual `request(mode)`'s."""
        raise NotImplementedError

    def pieces(self, answer: str) -> list[str] | None:
        """The texts of the chunks `answer` streams in, where they are known."""
        return None

    def prompt_tokens(self, runner: ModelRunner, answer: Answer) -> int | None:
        """The prompt tokens the last request (answer's) must report."""
        return answer.prompt_tokens

    def reached(self, runner: ModelRunner) -> int | None:
        """How many requests reached the engine or provider so far (None: not observable)."""
        return None

    def active(self, runner: ModelRunner) -> int:
        """Generations in progress on the engine's side."""
        return 0

    async def settle(self, runner: ModelRunner) -> None:
        """Wait until no generation is in progress (an engine's worker may finish its bookkeeping
        just after the caller got the final chunk); fail after a safety limit."""

    def context_length(self, runner: ModelRunner) -> int:
        """The context length in tokens (a fake may be told one)."""
        raise NotImplementedError

    def sampled(self, seed: int | None) -> InferenceRequest:
        raise NotImplementedError

    def sent_seed(self) -> Any:
        """The seed the provider received (remote runtimes)."""
        raise NotImplementedError

    def varied_requests(self) -> list[InferenceRequest]:
        raise NotImplementedError

    def long_request(self) -> InferenceRequest:
        """A request that keeps producing for a long while (to leave in the middle)."""
        raise NotImplementedError

    async def before_leaving(self, runner: ModelRunner) -> Any:
        """A mark to compare with once the caller has left."""
        raise NotImplementedError

    async def stopped_after_leaving(self, runner: ModelRunner, mark: Any, first: Chunk) -> bool:
        """Wait until the work of a request whose caller left after `first` is over; whether it
        was cut short (False when it ended by itself first)."""
        raise NotImplementedError

    # embeddings (where `capabilities.embeddings`)

    def embedding(self, runner: ModelRunner) -> contextlib.AbstractAsyncContextManager[ModelRunner]:
        """A loaded runner of an embedding model (`runner` itself, or one built for the purpose)."""
        raise NotImplementedError

    def embed_calls(self, runner: ModelRunner) -> int:
        """Engine (or provider) calls an embedding runner has made so far."""
        raise NotImplementedError

    def expected_vector(self, text: str) -> list[float] | None:
        """The vector `text` must get, where it is known."""
        return None

    def embedding_tokens(self, texts: list[str]) -> int | None:
        """The prompt tokens embedding `texts` must report, where it is known."""
        return None


class CatalogContract:
    """What the catalog and the runner class say: the runner the catalog names, its capabilities."""

    adapter: ClassVar[RuntimeAdapter]

    def test_catalog_names_the_runner_and_its_capabilities(self) -> None:
        a = self.adapter
        if a.imports_package:
            a.require()
        module, _, name = a.runner_path.partition(":")
        cls = runner_class(a.runtime)
        assert cls is getattr(importlib.import_module(module), name)
        assert spec_of(a.runtime).local == a.local
        assert cls.capabilities == a.capabilities
        assert bool(a.logprob_modes) == a.capabilities.logprobs


class RunnerContract(CatalogContract):
    """The tests every generating runtime passes. A subclass sets `adapter`."""

    adapter: ClassVar[RuntimeAdapter]

    # -- answers -----------------------------------------------------------------------------

    @pytest.mark.parametrize("mode", MODES)
    def test_whole_answer(self, runner: ModelRunner, on: On[Any], mode: str) -> None:
        for answer in self.adapter.answers(mode):
            assert not answer.request.stream
            chunks = on(collect(runner, answer.request))
            last = check_stream(chunks)
            assert (text(chunks), last.finish_reason) == (answer.text, "stop"), answer.request
            assert all(c.logprobs is None for c in chunks)  # none unless asked
            self.check_usage(runner, on, answer, last)

    def check_usage(self, runner: ModelRunner, on: On[Any], answer: Answer, last: Chunk) -> None:
        assert last.usage is not None and last.usage.completion_tokens > 0
        expected = self.adapter.prompt_tokens(runner, answer)
        if expected is not None:
            assert last.usage.prompt_tokens == expected
        if runner.capabilities.count_tokens:  # the runner's own count agrees with what it reports
            assert last.usage.prompt_tokens == on(runner.count_tokens(answer.request))

    @pytest.mark.parametrize("mode", MODES)
    def test_streaming(self, runner: ModelRunner, on: On[Any], mode: str) -> None:
        """Chunks as they come, then exactly one final chunk with finish_reason and usage."""
        a = self.adapter
        for answer in a.answers(mode):
            chunks = on(collect(runner, streamed(answer.request)))
            last = check_stream(chunks, one_token_per_chunk=a.one_per_chunk(mode))
            assert (text(chunks), last.finish_reason) == (answer.text, "stop")
            self.check_usage(runner, on, answer, last)
            pieces = a.pieces(answer.text)
            if pieces is not None:
                assert [c.text for c in chunks[:-1]] == pieces and last.text == ""
            if mode in a.streamed_modes:
                assert len([c for c in chunks if c.text]) > 1, "the answer came in one piece"
            else:
                assert len(chunks) == 1

    @pytest.mark.parametrize("mode", MODES)
    def test_max_tokens_gives_length(self, runner: ModelRunner, on: On[Any], mode: str) -> None:
        a = self.adapter
        answer = a.answers(mode)[0]
        chunks = on(collect(runner, streamed(with_params(answer.request, max_tokens=5))))
        last = check_stream(chunks, one_token_per_chunk=a.one_per_chunk(mode))
        assert last.finish_reason == "length"
        assert last.usage is not None and last.usage.completion_tokens == 5
        got = text(chunks)
        assert got and answer.text.startswith(got) and got != answer.text
        pieces = a.pieces(answer.text)
        if pieces is not None:
            assert got == "".join(pieces[:5])

    @pytest.mark.parametrize("mode", MODES)
    def test_stop_sequences(self, runner: ModelRunner, on: On[Any], mode: str) -> None:
        answer = self.adapter.answers(mode)[0]
        full = answer.text
        whole = check_stream(on(collect(runner, answer.request))).usage
        assert whole is not None
        earlier = full[len(full) // 4 :][:5]  # stop strings inside the answer, across tokens
        later = full[len(full) // 2 :][:4]
        assert earlier.strip() and later.strip() and full.index(earlier) < full.index(later)

        def stopped(*stop: str) -> tuple[str, Chunk]:
            chunks = on(collect(runner, streamed(with_params(answer.request, stop=stop))))
            return text(chunks), check_stream(chunks, one_token_per_chunk=self.adapter.one_per_chunk(mode))

        got, last = stopped(later)
        assert (got, last.finish_reason) == (full[: full.index(later)], "stop")
        assert last.usage is not None and 0 < last.usage.completion_tokens <= whole.completion_tokens
        assert stopped(later, earlier)[0] == full[: full.index(earlier)]  # the earliest of several wins
        assert stopped("zebra", later)[0] == full[: full.index(later)]  # beside one that never appears
        got, last = stopped("zebra")  # a stop string that never appears changes nothing
        assert (got, last.finish_reason) == (full, "stop")
        got, last = stopped(full[-6:] + "!")  # held back while it might match, released at the end
        assert (got, last.finish_reason) == (full, "stop")
        early = full[2:4]  # found at once: hardly any text
        assert stopped(early)[0] == full[: full.index(early)]

    def test_same_seed_same_text(self, runner: ModelRunner, on: On[Any]) -> None:
        a = self.adapter
        if a.no_seed:  # then a seed is refused by name, never ignored
            assert "seed" not in runner.capabilities.features
            with pytest.raises(InvalidRequestError) as refused:
                check_supported(runner, a.sampled(7))
            assert refused.value.field == "seed"
            return

        def sample(seed: int | None) -> str:
            chunks = on(collect(runner, a.sampled(seed)))
            check_stream(chunks)
            return text(chunks)

        first = sample(7)
        if not a.local:
            assert a.sent_seed() == 7  # the seed reached the provider
        assert sample(7) == first
        if a.seed_changes_text:
            assert len({sample(s) for s in range(1, 6)}) > 1  # the seed matters: this is sampling
        assert sample(None)  # unseeded sampling answers too

    @pytest.mark.parametrize("mode", MODES)
    def test_logprobs(self, runner: ModelRunner, on: On[Any], mode: str) -> None:
        """Per-token logprobs where the runner declares them; elsewhere the request is refused
        before it reaches the engine, naming the field, by the check every runner goes through."""
        a = self.adapter
        request = streamed(with_params(a.answers(mode)[0].request, logprobs=True))
        if runner.capabilities.logprobs and mode in a.logprob_modes:
            chunks = on(collect(runner, request))
            last = check_stream(chunks)
            lps = logprobs_of(chunks)
            assert all(c.logprobs is not None and len(c.logprobs) == c.token_count for c in chunks)
            assert last.usage is not None and len(lps) == last.usage.completion_tokens > 0
            assert all(math.isfinite(lp.logprob) and lp.logprob <= 0.0 for lp in lps)
            assert "".join(lp.token for lp in lps) == text(chunks)
            if a.local:  # greedy on memorised text: the chosen tokens are very likely
                assert sum(lp.logprob for lp in lps) / len(lps) > -0.5
            return
        on(a.settle(runner))  # earlier requests fully counted
        before = a.reached(runner)
        chunks, final = on(through_session(runner, request))
        assert chunks == [] and final.error is not None
        assert (final.error.kind, final.error.field) == ("invalid_request", "logprobs"), final.error
        assert a.reached(runner) == before  # refused before the engine or provider saw it
        if not runner.capabilities.logprobs:  # refused by what the runner declares
            assert a.runtime in final.error.message and final.error.details["runtime"] == a.runtime
            with pytest.raises(InvalidRequestError) as info:
                check_supported(runner, request)
            assert info.value.field == "logprobs"

    @pytest.mark.parametrize("mode", MODES)
    def test_run_session_serves_what_is_declared_and_refuses_the_rest(
        self, runner: ModelRunner, on: On[Any], mode: str
    ) -> None:
        answer = self.adapter.answers(mode)[0]
        declared = runner.capabilities.chat if mode == "chat" else runner.capabilities.completion
        on(self.adapter.settle(runner))  # earlier requests fully counted
        before = self.adapter.reached(runner)
        chunks, final = on(through_session(runner, answer.request))
        if declared:
            assert final.error is None, final.error
            assert text(chunks) == answer.text and final.usage is not None
            return
        assert chunks == [] and final.error is not None
        assert (final.error.kind, final.error.field) == ("invalid_request", "messages" if mode == "chat" else "prompt")
        assert self.adapter.reached(runner) == before

    # -- limits ------------------------------------------------------------------------------

    @pytest.mark.parametrize("mode", MODES)
    def test_context_length(self, runner: ModelRunner, on: On[Any], mode: str) -> None:
        a = self.adapter
        ctx = a.context_length(runner)
        with pytest.raises(ContextLengthError) as info:  # a prompt longer than the context
            on(collect(runner, a.request(mode, prompt="word " * (ctx + 44))))
        err = info.value
        assert (err.kind, err.http_status, err.retryable) == ("context_length", 400, False)
        if a.local:
            field = "messages" if mode == "chat" else "prompt"
            assert err.field == field
            answer = a.answers(mode)[0]
            n = answer.prompt_tokens
            assert n is not None
            # the prompt fits, prompt + max_tokens does not
            with pytest.raises(ContextLengthError) as info:
                on(collect(runner, with_params(answer.request, max_tokens=ctx - n + 1)))
            assert info.value.field == field
            assert info.value.details == {"prompt_tokens": n, "context_length": ctx}
            chunks = on(collect(runner, with_params(answer.request, max_tokens=ctx - n)))  # exactly the context
            assert text(chunks) == answer.text and check_stream(chunks).finish_reason == "stop"
            # what gateways refuse with before the request leaves them: never a prompt that fits
            limit = runner.prompt_limit()
            assert limit is not None and limit.context_tokens == ctx
            assert -(-answer.request.prompt_chars // limit.max_token_chars) <= n  # a lower bound
            assert limit.too_long(answer.request) is None
            overlong = a.request(mode, prompt="w" * (limit.max_token_chars * (ctx + 1)))
            assert limit.too_long(overlong) is not None
        on(a.settle(runner))  # nothing left running

    @pytest.mark.parametrize("how", ["aclose", "task_cancel"])
    def test_cancellation(self, runner: ModelRunner, on: On[Any], how: str) -> None:
        """A caller that closes its stream (or whose task is cancelled) stops the work."""
        a = self.adapter

        async def attempt() -> bool:
            mark = await a.before_leaving(runner)
            first = await leave_after_first_chunk(runner, a.long_request(), how)
            return await a.stopped_after_leaving(runner, mark, first)

        async def go() -> None:
            # A sampled generation may end on its own before the caller leaves: tries go on (for a
            # while, not a fixed few) until one is cut.
            tries = await keep_trying(attempt, any, seconds=30.0)
            assert any(tries), f"no try was cut in {len(tries)}"
            await a.settle(runner)
            answer = a.answers("chat")[0]  # the runner serves the next request normally
            assert text(await collect(runner, answer.request)) == answer.text

        on(go())

    def test_concurrent_equal_sequential(self, runner: ModelRunner, on: On[Any]) -> None:
        requests = self.adapter.varied_requests()
        sequential = [text(on(collect(runner, r))) for r in requests]

        async def together() -> list[list[Chunk]]:
            return await asyncio.gather(*(collect(runner, r) for r in requests))

        results = on(together())
        assert [text(c) for c in results] == sequential
        for chunks in results:
            check_stream(chunks)


@dataclass(frozen=True)
class ErrorCase:
    """An HTTP error from the provider and the taxonomy error it must become."""

    status: int
    kind: str
    retryable: bool
    http_status: int
    body: Any = None  # the provider's error body (None: the fake's own for the status)
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    reported_status: int | None = None  # the status the error reports, when the runner reads another
    name: str = ""  # what tells two cases of one status and kind apart

    @property
    def id(self) -> str:
        return "-".join(filter(None, (str(self.status), self.kind, self.name)))


# what every provider's 400/401/404/429/500/529 must become
ERRORS = (
    ErrorCase(400, "invalid_request", False, 400),
    ErrorCase(401, "auth", False, 401),
    ErrorCase(404, "not_found", False, 404),
    ErrorCase(429, "rate_limited", True, 429, headers={"retry-after": "7"}),
    ErrorCase(500, "unavailable", True, 503),
    ErrorCase(529, "overloaded", True, 503),
)
CIRCUIT = {"failure_threshold": 2, "cooldown_s": 0.3, "half_open_probes": 1}


class RemoteAdapter(RuntimeAdapter):
    """A remote API runtime against its fake server (hooks in adapters.py)."""

    local = False
    provider: ClassVar[str]  # how its errors begin: "<provider> returned <status>: ..."
    more_errors: ClassVar[tuple[ErrorCase, ...]] = ()  # the provider's own, beyond ERRORS
    finish_reasons: ClassVar[tuple[tuple[str, str], ...]] = ()  # (the provider's reason, finish_reason)
    events_before_text: ClassVar[int]  # stream events before the first text
    cut_says: ClassVar[str]  # what the error of a stream cut short says was missing
    pieces_before_bad_event: ClassVar[int]  # text chunks a stream sends before `bad_event_next`'s event
    keyless: ClassVar[str | None] = None  # why a missing key does not fail at load (None: it does)
    key_env: ClassVar[str]
    key: str
    fake: Any

    def build(self, api_base: str | None = None, model: str | None = None, **engine: Any) -> ModelRunner:
        """A runner (not loaded) for the fake, or `api_base`; no retries unless `engine` says."""
        raise NotImplementedError

    def new_fake(self, api_key: str | None) -> Any:
        """Another fake server of this provider (a context manager)."""
        raise NotImplementedError

    def api_base_of(self, fake: Any) -> str:
        return str(fake.url)

    def error_payload(self, status: int, message: str) -> Any:
        """The provider's error body for `status` with this message."""
        payload = self.fake.error_body(status)
        payload["error"]["message"] = message
        return payload

    def error_label(self, payload: Any) -> str | None:
        """The provider's name for an error (its type or status) that the error must show."""
        return None

    def serve_finish(self, reason: str) -> None:
        """Have the fake end its answers with the provider's `reason`."""
        self.fake.finish_override = reason

    @property
    def unknown_model(self) -> str:
        raise NotImplementedError


class EmbeddingContract(CatalogContract):
    """What every runtime that declares embeddings does (others skip): all inputs of a request in
    one engine or provider call, in input order, the same text the same vector, usage,
    `dimensions` shortened to unit length. The adapter supplies `embedding(runner)` (a loaded
    embedding runner), `embed_calls(runner)` (engine or provider calls so far), and where it knows
    them `expected_vector(text)` and `embedding_tokens(texts)`."""

    adapter: ClassVar[RuntimeAdapter]

    def _embedding(self, runner: ModelRunner) -> contextlib.AbstractAsyncContextManager[ModelRunner]:
        a = self.adapter
        if not a.capabilities.embeddings:
            pytest.skip(f"the {a.runtime} runtime makes no embeddings")
        return a.embedding(runner)

    def test_embeddings_every_input_in_one_call(self, runner: ModelRunner, on: On[Any]) -> None:
        a = self.adapter
        texts = [f"sentence {i} on topic {i % 7}" for i in range(256)]

        async def twice() -> tuple[Chunk, Chunk, list[int]]:
            async with self._embedding(runner) as r:
                calls = [a.embed_calls(r)]
                whole = await r.embed(embed_request(texts))
                calls.append(a.embed_calls(r))
                again = await r.embed(embed_request(texts[:3]))
                calls.append(a.embed_calls(r))
                return whole, again, calls

        whole, again, calls = on(twice())
        assert [after - before for before, after in itertools.pairwise(calls)] == [1, 1]  # 256 inputs, 3 inputs
        vectors = [unpack_vector(v) for v in whole.embeddings]
        assert len(vectors) == 256 and whole.finish_reason == "stop"
        again_vectors = [unpack_vector(v) for v in again.embeddings]
        for mine, first in zip(again_vectors, vectors, strict=False):  # the same text, the same vector
            assert mine == pytest.approx(first, abs=1e-5)  # (a local batch pads: float32 rounding)
        assert len({tuple(v) for v in vectors}) == 256  # every text its own vector
        for sentence, vector in zip(texts[:8], vectors, strict=False):  # in input order, as made
            expected = a.expected_vector(sentence)
            assert expected is None or vector == pytest.approx(expected, abs=1e-6)
        tokens = a.embedding_tokens(texts)
        if tokens is not None:
            assert whole.usage.prompt_tokens == tokens
        else:
            assert whole.usage.prompt_tokens >= 256

    def test_embeddings_shortened_to_dimensions(self, runner: ModelRunner, on: On[Any]) -> None:
        async def shortened() -> Chunk:
            async with self._embedding(runner) as r:
                return await r.embed(embed_request(["short vectors please"], dimensions=16))

        (vector,) = [unpack_vector(v) for v in on(shortened()).embeddings]
        assert len(vector) == 16 and math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-5)


class RemoteRunnerContract(RunnerContract, EmbeddingContract):
    """What remote API runners add: their fake's HTTP errors mapped to the taxonomy, retries, the
    deadline, the circuit breaker, broken streams and bodies, and keys that never show.

    `error_case` and `finish_case` are parametrised per runtime (conftest.py): the errors every
    provider shares, then the adapter's own."""

    adapter: ClassVar[RemoteAdapter]

    def test_error_mapping(
        self,
        runner: ModelRunner,
        on: On[Any],
        error_case: ErrorCase,
        caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str],
    ) -> None:
        a, case = self.adapter, error_case
        caplog.set_level(logging.DEBUG)
        payload = copy.deepcopy(case.body) if case.body is not None else a.error_payload(case.status, "")
        said = payload["error"]["message"] or f"contract error {case.status}"
        payload["error"]["message"] = f"{said} [{a.key}]"  # the key, as providers repeat it
        a.fake.fail_next(case.status, payload, case.headers)
        chunks, err = on(outcome(runner, a.request("chat", stream=True)))
        assert chunks == [] and err is not None
        assert (err.kind, err.retryable, err.http_status) == (case.kind, case.retryable, case.http_status), err
        status = case.reported_status or case.status
        assert err.details.get("status") == status
        assert err.message.startswith(f"{a.provider} returned {status}")
        assert err.message.endswith(f"{said} [***]")  # the provider's words, the key masked
        label = a.error_label(payload)
        assert label is None or label in err.message
        if "retry-after" in case.headers:
            assert err.retry_after == float(case.headers["retry-after"])
        assert_key_nowhere(a.key, err, caplog, capfd)
        assert a.fake.count() == 1

    def test_finish_reasons_map(self, runner: ModelRunner, on: On[Any], finish_case: tuple[str, str]) -> None:
        served, expected = finish_case
        self.adapter.serve_finish(served)
        chunks, err = on(outcome(runner, self.adapter.request("chat", stream=True)))
        assert err is None and check_stream(chunks).finish_reason == expected

    def test_a_missing_key_fails_at_load(self, environment: None) -> None:
        a = self.adapter
        if a.keyless:
            pytest.skip(a.keyless)
        runner = a.build(api_base="http://127.0.0.1:9")
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv(a.key_env, raising=False)
            mp.delenv(type(runner).default_key_env, raising=False)  # type: ignore[attr-defined]
            with pytest.raises(AuthError, match=a.key_env) as info:
                asyncio.run(runner.load())
        assert info.value.field == "engine.api_key_env"

    def test_embeddings_errors_are_the_taxonomy(self, runner: ModelRunner, on: On[Any]) -> None:
        a = self.adapter
        embedding = self._embedding(runner)  # (skips here where the runtime makes no embeddings)

        async def embed_hello() -> Chunk:
            async with embedding as r:
                return await r.embed(embed_request(["hello"]))

        a.fake.fail_next(429, a.error_payload(429, "Slow down."), {"retry-after": "7"})
        with pytest.raises(InferenceError) as info:
            on(embed_hello())
        assert (info.value.kind, info.value.retry_after) == ("rate_limited", 7.0)
        with pytest.raises(InferenceError) as info:  # a model the provider does not have: its 4xx, mapped
            on(outcome_embed(a.build(model=a.unknown_model), embed_request(["hello"])))
        assert info.value.kind in ("not_found", "invalid_request"), info.value

    def test_unknown_model_is_not_found(self, on: On[Any]) -> None:
        a = self.adapter
        name = a.unknown_model.rpartition("/")[2]
        _, err = on(outcome_on(a.build(model=a.unknown_model), a.request("chat")))
        assert err is not None and err.kind == "not_found" and name in err.message

    def test_unreachable_provider_is_unavailable(self, on: On[Any]) -> None:
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        _, err = on(outcome_on(self.adapter.build(api_base=f"http://127.0.0.1:{port}"), self.adapter.request("chat")))
        assert err is not None and (err.kind, err.retryable) == ("unavailable", True)
        assert "connection failed" in err.message

    def test_retry_after_is_honoured_then_it_succeeds(self, on: On[Any]) -> None:
        a = self.adapter
        a.fake.fail_next(429, headers={"retry-after": "1"})
        chunks, err = on(outcome_on(a.build(retry=FAST_RETRY), a.request("chat", stream=True)))
        assert err is None and text(chunks) == a.fake.reply_text
        assert a.fake.count() == 2
        assert a.fake.calls[1].at - a.fake.calls[0].at >= 1.0

    @pytest.mark.parametrize("status", [503, 529])
    def test_server_errors_are_retried_then_it_succeeds(self, on: On[Any], status: int) -> None:
        a = self.adapter
        a.fake.fail_next(status, times=2)
        chunks, err = on(outcome_on(a.build(retry=FAST_RETRY), a.request("chat", stream=True)))
        assert err is None and text(chunks) == a.fake.reply_text
        assert a.fake.count() == 3

    @pytest.mark.parametrize("status", [400, 401])
    def test_client_errors_are_never_retried(self, on: On[Any], status: int) -> None:
        a = self.adapter
        a.fake.fail_next(status, times=3)
        _, err = on(outcome_on(a.build(retry={**FAST_RETRY, "max_attempts": 4}), a.request("chat")))
        assert err is not None and err.kind == ("invalid_request" if status == 400 else "auth") and not err.retryable
        assert a.fake.count() == 1

    def test_deadline_bounds_a_stalled_provider(self, on: On[Any]) -> None:
        a = self.adapter
        with a.new_fake(a.key) as stalled:  # its own server: the stalled call lives on after the test
            stalled.stall_next(10)
            request = a.request("chat", stream=True)
            request = dataclasses.replace(request, deadline=time.time() + 2)
            started = time.monotonic()
            chunks, err = on(outcome_on(a.build(api_base=a.api_base_of(stalled), retry=FAST_RETRY), request))
            elapsed = time.monotonic() - started
            assert chunks == [] and err is not None and (err.kind, err.retryable) == ("timeout", True)
            assert 1.5 < elapsed < 6.0  # the deadline, well before the 10 s stall ends
            assert stalled.count() == 1

    def test_circuit_breaker_opens_fails_fast_and_a_probe_closes_it(self, on: On[Any]) -> None:
        a = self.adapter
        runner = a.build(retry=NO_RETRY, circuit=CIRCUIT)

        async def go() -> None:
            async with load(runner) as r:
                call = a.request("chat")

                async def fails(kind: str, reached: int) -> None:
                    _, err = await outcome(r, call)
                    assert err is not None and err.kind == kind and err.retryable, err
                    assert a.fake.count() == reached

                a.fake.fail_next(503, times=2)
                await fails("unavailable", 1)
                await fails("unavailable", 2)
                assert r.status()["circuit"]["state"] == "open"  # type: ignore[attr-defined]
                await fails("circuit_open", 2)  # nothing reaches the provider while open
                await fails("circuit_open", 2)
                await asyncio.sleep(CIRCUIT["cooldown_s"] + 0.05)
                chunks, err = await outcome(r, call)  # the half-open probe goes through and succeeds
                assert err is None and text(chunks) == a.fake.reply_text and a.fake.count() == 3
                assert r.status()["circuit"] == {"state": "closed", "consecutive_failures": 0}  # type: ignore[attr-defined]
                a.fake.fail_next(503, times=3)
                await fails("unavailable", 4)
                await fails("unavailable", 5)
                await asyncio.sleep(CIRCUIT["cooldown_s"] + 0.05)
                await fails("unavailable", 6)  # a failed probe opens it again
                await fails("circuit_open", 6)

        on(go())

    def test_stream_cut_after_text_is_not_restarted(self, on: On[Any]) -> None:
        a = self.adapter
        a.fake.cut_next_after(a.events_before_text + 2)  # two pieces of text, then the connection drops
        chunks, err = on(outcome_on(a.build(retry={**FAST_RETRY, "max_attempts": 4}), a.request("chat", stream=True)))
        assert [c.text for c in chunks] == (a.pieces(a.fake.reply_text) or [])[:2]  # no piece twice
        assert err is not None and err.kind == "unavailable" and a.cut_says in err.message
        assert a.fake.count() == 1  # text had reached the caller: never retried

    def test_malformed_answers_give_clear_errors(self, on: On[Any]) -> None:
        a = self.adapter
        a.fake.malformed_next()  # a body that is not JSON
        chunks, err = on(outcome_on(a.build(), a.request("chat", stream=True)))
        assert chunks == [] and err is not None and err.kind == "unavailable" and "malformed" in err.message
        assert err.details.get("malformed") is True
        a.fake.bad_event_next()  # an event whose data is not JSON, after some text
        chunks, err = on(outcome_on(a.build(), a.request("chat", stream=True)))
        pieces = a.pieces(a.fake.reply_text) or []
        assert [c.text for c in chunks] == pieces[: a.pieces_before_bad_event]
        assert err is not None and err.kind == "unavailable" and "malformed" in err.message
        calls = a.fake.count()
        a.fake.malformed_next()  # retryable, and nothing had reached the caller: a second try succeeds
        chunks, err = on(outcome_on(a.build(retry=FAST_RETRY), a.request("chat", stream=True)))
        assert err is None and text(chunks) == a.fake.reply_text
        assert a.fake.count() == calls + 2

    def test_the_key_never_reaches_errors_or_logs(
        self, on: On[Any], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
    ) -> None:
        a = self.adapter
        caplog.set_level(logging.DEBUG)
        log = logging.getLogger("atomr.test")
        # the right key, and error bodies that repeat it, through retries
        a.fake.fail_next(429, a.error_payload(429, f"slow down {a.key}"), {"retry-after": "0"})
        a.fake.fail_next(529, a.error_payload(529, f"overloaded {a.key}"))
        a.fake.fail_next(500, a.error_payload(500, f"exploded {a.key}"))
        _, err = on(outcome_on(a.build(retry=FAST_RETRY), a.request("chat", stream=True)))
        assert err is not None and err.kind == "unavailable" and a.fake.count() == 3
        log.error("request failed: %s (%r)", err, err)
        assert_key_nowhere(a.key, err, caplog, capfd)
        # a wrong key: the provider's own refusal repeats the key it received
        wrong = new_key("sk-wrong-")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ATOMR_TEST_WRONG_KEY", wrong)
            _, err = on(outcome_on(a.build(api_key_env="ATOMR_TEST_WRONG_KEY"), a.request("chat", stream=True)))
        assert err is not None and err.kind == "auth" and not err.retryable
        log.error("request failed: %s (%r)", err, err)
        assert_key_hidden(err, a.key)
        assert_key_nowhere(wrong, err, caplog, capfd)
        assert any("request failed" in r.getMessage() for r in caplog.records)


async def outcome_embed(runner: ModelRunner, request: InferenceRequest) -> Chunk:
    """Load `runner`, embed `request`'s inputs, unload it."""
    async with load(runner) as r:
        return await r.embed(request)


def embed_request(texts: list[str], **fields: Any) -> InferenceRequest:
    request = InferenceRequest(model="remote", task="embed", inputs=tuple(texts), **fields)
    request.validate()
    return request


async def outcome_on(runner: ModelRunner, request: InferenceRequest) -> tuple[list[Chunk], InferenceError | None]:
    """Load `runner`, run one request, unload it: its chunks and error."""
    async with load(runner) as r:
        return await outcome(r, request)
