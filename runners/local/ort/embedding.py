"""The `ort-embed` runtime: text-embedding models on plain ONNX Runtime (`InferenceSession`).

A model folder (or its `onnx/` subfolder, as in the built-in `builtin:tiny-embed`) holds
`model.onnx` (inputs `input_ids` and `attention_mask`, int64, batch x tokens; one output, float32
vectors, batch x dimensions, pooled and normalised inside the graph), `tokenizer.json` (a HF
`tokenizers` tokenizer) and `embedding_config.json` (`dimensions`, `max_length`, `pad_token_id`,
the tensors' names). `onnxruntime` and `tokenizers` are imported when a model is loaded.

Batching: all inputs of a request go through the session in ONE `run` call, as one right-padded
batch with its attention mask; concurrent requests are collected as the ORT GenAI runner's
"batch" scheduler collects them (`atomr.runners.common.batching.BatchCollector`: up to
`max_batch_size` requests, waiting at most `max_wait_ms` for others to join, and only when
concurrency was seen) and run together, several in one call while their inputs add up to at most
`max_batch_inputs` (a request is never split). One worker thread tokenises a batch (one
`encode_batch` call) and runs it. `engine_calls` and `inputs_embedded` count what it ran.

Length: an input longer than the model's `max_length` tokens is refused, not truncated
(`context_length`, naming `input[i]`, as OpenAI refuses an input over its model's limit): a
vector of a cut text would silently stand for text the model never read. The other requests of
the batch are unaffected.

`dimensions` (capability "dimensions"): the first N numbers of each vector, scaled back to unit
length (`atomr.core.vectors.shorten`); more than the model has is refused. Usage: the inputs'
tokens as `prompt_tokens`. The model does not generate text (`capabilities.generate` false):
chat and completion requests are refused before they reach the runner, naming `model`.

Engine options (`deployment.engine`; an unknown key is a ConfigError naming it):
  max_batch_size    most requests in one engine call (default 32)
  max_batch_inputs  most inputs in one engine call, unless one request alone has more (default 2048)
  max_wait_ms       longest a request waits for others to join its call (default 5)
  intra_op_threads  ORT intra-op threads (default 1; this is a shared CPU)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from atomr.runners.common.batching import BatchCollector
from atomr.runners.common.engine_thread import EngineThread
from atomr.runners.common.model_files import model_root
from atomr.runners.local.ort.spec import OrtEmbeddingOptions, embedding_folder
from atomr.runners.spec import parse_engine_options

from atomr.core.errors import (
    ContextLengthError,
    InferenceError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    UnavailableError,
)
from atomr.core.runner import ModelRunner, RunnerCapabilities
from atomr.core.types import Chunk, InferenceRequest, Usage
from atomr.core.vectors import pack_vector, shorten

if TYPE_CHECKING:
    import numpy as np

    from atomr.core.deployment import Deployment


@dataclass(frozen=True, slots=True)
class EmbeddingModel:
    """A loaded encoder: its ONNX Runtime session, tokenizer and facts."""

    session: Any
    tokenizer: Any
    dimensions: int
    max_length: int
    pad_id: int
    input_names: tuple[str, str]  # token ids, attention mask
    output_name: str


def open_embedding_model(folder: Path, intra_op_threads: int) -> EmbeddingModel:
    """Load the encoder in `folder` (the one holding `embedding_config.json`)."""
    try:
        import onnxruntime as ort
        from tokenizers import Tokenizer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InternalError(f"the ort-embed runtime needs onnxruntime and tokenizers: {exc}") from None
    try:
        config = json.loads((folder / "embedding_config.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except FileNotFoundError as exc:
        raise NotFoundError(f"the embedding model at {folder} lacks a file: {exc}", field="model") from None
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime and tokenizers raise classes of their own
        raise InternalError(f"could not load the embedding model at {folder}: {exc}") from None
    ids_name, mask_name = config.get("inputs", ["input_ids", "attention_mask"])
    return EmbeddingModel(
        session=session,
        tokenizer=tokenizer,
        dimensions=int(config["dimensions"]),
        max_length=int(config["max_length"]),
        pad_id=int(config.get("pad_token_id", 0)),
        input_names=(ids_name, mask_name),
        output_name=str(config.get("output", "embeddings")),
    )


@dataclass(eq=False)
class Job:
    """One request's inputs, and the future its caller awaits: (vectors, token count)."""

    texts: Sequence[str]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[tuple[np.ndarray, int]] = field(init=False)
    ids: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.future = self.loop.create_future()

    def settle(self, outcome: tuple[np.ndarray, int] | BaseException) -> None:
        """Answer the caller (from any thread), unless it has gone."""

        def deliver() -> None:
            if self.future.done():
                return
            if isinstance(outcome, BaseException):
                self.future.set_exception(outcome)
            else:
                self.future.set_result(outcome)

        self.loop.call_soon_threadsafe(deliver)


class EmbeddingWorker(EngineThread[Job]):
    """The thread that runs batches of jobs through the session, one `run` per group of jobs."""

    def __init__(self, model: EmbeddingModel, options: OrtEmbeddingOptions) -> None:
        super().__init__("atomr-ort-embed", "the ORT embedding thread")
        self._m = model
        self._max_inputs = options.max_batch_inputs
        self._collector: BatchCollector[Job] = BatchCollector(options.max_batch_size, options.max_wait_ms / 1000.0)
        self.calls = 0  # session.run calls, and the inputs they embedded
        self.inputs = 0

    def _accept(self, job: Job) -> None:
        self._collector.submit(job)

    def stop(self) -> None:
        for job in self._collector.close():
            job.settle(UnavailableError("the ort-embed runner was unloaded before the request ran"))
        self.join()

    def _main(self) -> None:
        while (batch := self._collector.next_batch(drop=lambda job: job.future.done())) is not None:
            try:
                self._run(batch)
            except Exception as exc:  # noqa: BLE001 - the callers get the engine's failure, the thread goes on
                error = InternalError(f"ONNX Runtime failed to embed: {type(exc).__name__}: {exc}")
                for job in batch:
                    job.settle(error)

    def _run(self, batch: list[Job]) -> None:
        encodings = self._m.tokenizer.encode_batch([text for job in batch for text in job.texts])
        at = 0
        ready: list[Job] = []
        for job in batch:
            job.ids = [e.ids for e in encodings[at : at + len(job.texts)]]
            at += len(job.texts)
            problem = self._too_long(job.ids)
            if problem is None:
                ready.append(job)
            else:
                job.settle(problem)
        for group in self._groups(ready):
            self._embed(group)

    def _too_long(self, ids: list[list[int]]) -> InferenceError | None:
        limit = self._m.max_length
        for i, tokens in enumerate(ids):
            if len(tokens) > limit:
                return ContextLengthError(
                    f"input[{i}] has {len(tokens)} tokens, over the model's limit of {limit}: shorten or split it",
                    field=f"input[{i}]",
                    details={"prompt_tokens": len(tokens), "context_length": limit},
                )
        return None

    def _groups(self, jobs: list[Job]) -> list[list[Job]]:
        """Consecutive jobs whose inputs add up to at most `max_batch_inputs` (a job is never split)."""
        groups: list[list[Job]] = []
        size = 0
        for job in jobs:
            if groups and size + len(job.ids) <= self._max_inputs:
                groups[-1].append(job)
                size += len(job.ids)
            else:
                groups.append([job])
                size = len(job.ids)
        return groups

    def _embed(self, jobs: list[Job]) -> None:
        import numpy as np

        rows = [tokens for job in jobs for tokens in job.ids]
        width = max(len(tokens) for tokens in rows)
        ids = np.full((len(rows), width), self._m.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for r, tokens in enumerate(rows):
            ids[r, : len(tokens)] = tokens
            mask[r, : len(tokens)] = 1
        ids_name, mask_name = self._m.input_names
        (vectors,) = self._m.session.run([self._m.output_name], {ids_name: ids, mask_name: mask})
        self.calls += 1
        self.inputs += len(rows)
        at = 0
        for job in jobs:
            n = len(job.ids)
            job.settle((vectors[at : at + n], sum(len(tokens) for tokens in job.ids)))
            at += n


class OrtEmbeddingRunner(ModelRunner):
    """Serves one ONNX text-embedding model; many `embed` calls run at once."""

    capabilities: ClassVar[RunnerCapabilities] = RunnerCapabilities(
        streaming=False,
        logprobs=False,
        batching=True,
        chat=False,
        completion=False,
        needs_gpu=False,
        generate=False,
        embeddings=True,
        features=frozenset({"dimensions"}),
    )

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        self.options = parse_engine_options("ort-embed", deployment.engine, OrtEmbeddingOptions)
        self._m: EmbeddingModel | None = None
        self._worker: EmbeddingWorker | None = None

    async def load(self) -> None:
        root = model_root(self.deployment)
        folder = embedding_folder(root)
        if folder is None:
            raise NotFoundError(
                f"no embedding model at {root} (no embedding_config.json there or in onnx/)", field="model"
            )
        m = await asyncio.to_thread(open_embedding_model, folder, self.options.intra_op_threads)
        worker = EmbeddingWorker(m, self.options)
        worker.start()
        self._m, self._worker = m, worker

    async def health(self) -> bool:
        return self._worker is not None and self._worker.alive

    async def unload(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            await asyncio.to_thread(worker.stop)
        self._m = None

    @property
    def dimensions(self) -> int:
        return self._loaded()[0].dimensions

    @property
    def engine_calls(self) -> int:
        """Session `run` calls so far (for tests and metrics)."""
        return self._loaded()[1].calls

    @property
    def inputs_embedded(self) -> int:
        """Inputs embedded so far, in `engine_calls` calls."""
        return self._loaded()[1].inputs

    def _loaded(self) -> tuple[EmbeddingModel, EmbeddingWorker]:
        if self._m is None or self._worker is None:
            raise UnavailableError("the embedding model is not loaded")
        return self._m, self._worker

    def generate(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        raise InvalidRequestError(
            f"{self.deployment.model!r} is a text-embedding model: it does not generate text", field="model"
        )

    async def embed(self, request: InferenceRequest) -> Chunk:
        m, worker = self._loaded()
        wanted = request.dimensions
        if wanted is not None and wanted > m.dimensions:
            raise InvalidRequestError(
                f"dimensions must be at most {m.dimensions} for this model, got {wanted}", field="dimensions"
            )
        job = Job(request.inputs or (), asyncio.get_running_loop())
        worker.submit(job)
        vectors, tokens = await job.future  # cancelling it drops the job if it has not run yet
        return Chunk(
            "",
            token_count=0,
            finish_reason="stop",
            usage=Usage(prompt_tokens=tokens),
            embeddings=_packed(vectors, wanted),
        )


def _packed(vectors: np.ndarray, dimensions: int | None) -> tuple[bytes, ...]:
    """Each vector as float32 little-endian bytes (`atomr.core.vectors`), shortened when asked."""
    if dimensions is None:
        return tuple(row.tobytes() for row in vectors.astype("<f4", copy=False))
    return tuple(pack_vector(shorten(row.tolist(), dimensions)) for row in vectors)
