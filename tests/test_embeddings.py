"""Embeddings end to end: the built-in tiny embedding model on the `ort-embed` runtime, and remote
embedding models (`openai` and `gemini` deployments on their fakes), through ``POST
/v1/embeddings`` with the official `openai` SDK as the client and through `atomr.Client.embed`.

- the same text embeds to the same vector every time, in any batch and through either client;
- related texts score higher than unrelated ones on the model's held-out labelled sentences
  (`scripts/make_tiny_embedding_model.py` never trains on them);
- a 256-input request is ONE engine call (the runner's own count) and ONE provider call (the
  fake's count);
- base64 and float answers carry the same vectors; `dimensions` gives shorter unit vectors;
- refusals by field: a model that does not embed (`model`), token arrays (`input`), too many
  dimensions (`dimensions`), an input over the model's length (`input[i]`), an unknown model;
- the shipped model is what its manifest says, and small.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import itertools
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import openai
import pytest
import yaml

from atomr.client import Client
from atomr.config import deployment_from_dict
from atomr.core.errors import ContextLengthError, InvalidRequestError
from atomr.core.vectors import unpack_vector
from tests.conftest import REPO, Node, require_engine
from tests.fakes import gemini_server, openai_server
from tests.fakes.gemini_server import FakeGemini
from tests.fakes.openai_server import FakeOpenAI
from tests.local_support import remade_manifests
from tests.runners.contract import embed_request

KEY = "sk-embeddings-" + "e" * 24
TINY_EMBED = REPO / "atomr" / "models" / "tiny-embed"


def _maker() -> ModuleType:
    """scripts/make_tiny_embedding_model.py, for its labelled sentences (it imports torch only to train)."""
    spec = importlib.util.spec_from_file_location(
        "make_tiny_embedding_model", REPO / "scripts" / "make_tiny_embedding_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cosine(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


def norm(v: list[float]) -> float:
    return math.sqrt(math.fsum(x * x for x in v))


# -- the model as shipped, and its runner in this process ----------------------------------------


def test_the_shipped_model_is_its_manifest_and_small() -> None:
    manifest = json.loads((TINY_EMBED / "MANIFEST.json").read_text())
    total = 0
    for name, facts in manifest["files"].items():
        data = (TINY_EMBED / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == facts["sha256"], name
        total += len(data)
    assert total < 4 * 1024 * 1024, total
    config = json.loads((TINY_EMBED / "onnx" / "embedding_config.json").read_text())
    assert config["dimensions"] == manifest["dimensions"] == 128


@pytest.fixture(scope="module")
def runner(loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    """The `ort-embed` runner of builtin:tiny-embed, loaded in this process (to count engine calls)."""
    require_engine("onnxruntime", "ort")
    require_engine("tokenizers", "ort")
    from atomr.runners.catalog import runner_class

    dep = deployment_from_dict({"name": "embed", "model": "builtin:tiny-embed", "engine": {"intra_op_threads": 1}})
    assert dep.runtime == "ort-embed"
    r = runner_class(dep.runtime)(dep)
    loop.run_until_complete(r.load())
    try:
        yield r
    finally:
        loop.run_until_complete(r.unload())


def test_a_256_input_request_is_one_engine_call(runner: Any, loop: asyncio.AbstractEventLoop) -> None:
    texts = [f"sentence number {i} about the weather and the sea" for i in range(256)]
    calls, embedded = runner.engine_calls, runner.inputs_embedded
    chunk = loop.run_until_complete(runner.embed(embed_request(texts)))
    assert runner.engine_calls - calls == 1 and runner.inputs_embedded - embedded == 256
    vectors = [unpack_vector(v) for v in chunk.embeddings]
    assert len(vectors) == 256 and all(len(v) == 128 and math.isclose(norm(v), 1.0, rel_tol=1e-4) for v in vectors)
    assert chunk.usage.prompt_tokens >= 256


def test_the_same_text_the_same_vector(runner: Any, loop: asyncio.AbstractEventLoop) -> None:
    text = "The forecast says snow tomorrow."
    alone = loop.run_until_complete(runner.embed(embed_request([text])))
    again = loop.run_until_complete(runner.embed(embed_request([text])))
    assert alone.embeddings == again.embeddings  # byte for byte
    long_neighbour = "a much longer sentence that pads the batch " * 6
    padded = loop.run_until_complete(runner.embed(embed_request([long_neighbour, text])))
    # in a padded batch the masked mean pools the same tokens: equal up to float32 rounding
    assert unpack_vector(padded.embeddings[1]) == pytest.approx(unpack_vector(alone.embeddings[0]), abs=1e-5)


def test_related_texts_score_higher_than_unrelated_ones(runner: Any, loop: asyncio.AbstractEventLoop) -> None:
    held = _maker().held_out()  # (topic, sentence), never trained on
    assert len(held) >= 50 and len({topic for topic, _ in held}) == 10
    chunk = loop.run_until_complete(runner.embed(embed_request([s for _, s in held])))
    vectors = [unpack_vector(v) for v in chunk.embeddings]
    related: dict[str, list[float]] = {}  # per topic: its pairs' scores, and its sentences' scores with others
    unrelated: dict[str, list[float]] = {}
    for (i, (ta, _)), (j, (tb, _)) in itertools.combinations(enumerate(held), 2):
        score = cosine(vectors[i], vectors[j])
        if ta == tb:
            related.setdefault(ta, []).append(score)
        else:
            unrelated.setdefault(ta, []).append(score)
            unrelated.setdefault(tb, []).append(score)

    def mean(xs: list[float]) -> float:
        return math.fsum(xs) / len(xs)

    for topic in related:  # every topic's sentences are closer to each other than to the rest
        assert mean(related[topic]) > mean(unrelated[topic]), topic
    every_related = [x for scores in related.values() for x in scores]
    every_unrelated = [x for scores in unrelated.values() for x in scores]  # each pair twice: the same mean
    assert mean(every_related) > mean(every_unrelated) + 0.25  # measured: 0.61 against 0.21


def test_refusals_name_the_field(runner: Any, loop: asyncio.AbstractEventLoop) -> None:
    with pytest.raises(InvalidRequestError) as info:
        loop.run_until_complete(runner.embed(embed_request(["hello"], dimensions=129)))
    assert info.value.field == "dimensions"
    too_long = " ".join(["word"] * 400)
    calls = runner.engine_calls
    with pytest.raises(ContextLengthError) as too:
        loop.run_until_complete(runner.embed(embed_request(["fine", too_long])))
    assert too.value.field == "input[1]" and runner.engine_calls == calls  # refused before the engine ran
    shorter = loop.run_until_complete(runner.embed(embed_request(["hello there"], dimensions=32)))
    (vector,) = [unpack_vector(v) for v in shorter.embeddings]
    assert len(vector) == 32 and math.isclose(norm(vector), 1.0, rel_tol=1e-5)


def test_concurrent_requests_each_get_their_own_vectors(runner: Any, loop: asyncio.AbstractEventLoop) -> None:
    texts = [[f"request {r} input {i}" for i in range(r + 1)] for r in range(12)]

    async def together() -> list[Any]:
        return await asyncio.gather(*(runner.embed(embed_request(t)) for t in texts))

    alone = [loop.run_until_complete(runner.embed(embed_request(t))) for t in texts]
    for mine, solo in zip(loop.run_until_complete(together()), alone, strict=True):
        assert len(mine.embeddings) == len(solo.embeddings)
        for a, b in zip(mine.embeddings, solo.embeddings, strict=True):
            assert unpack_vector(a) == pytest.approx(unpack_vector(b), abs=1e-5)


# -- a node: the HTTP front and the Client --------------------------------------------------------


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def google() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, provider: FakeOpenAI, google: FakeGemini) -> Iterator[Node]:
    """A node serving embed (builtin:tiny-embed), remote-embed (openai), gemini-embed and gpt (chat only)."""
    require_engine("onnxruntime", "ort")
    folder = tmp_path_factory.mktemp("embeddings")
    (folder / "key").write_text(KEY)
    remote = {"api_key_file": str(folder / "key"), "retry": {"max_attempts": 1}}
    deployments = [
        {"name": "embed", "model": "builtin:tiny-embed", "engine": {"intra_op_threads": 1}},
        {
            "name": "remote-embed",
            "model": "openai/text-embedding-3-fake",
            "engine": {**remote, "api_base": provider.url + "/v1"},
        },
        {"name": "gemini-embed", "model": "gemini/gemini-embedding-fake", "engine": {**remote, "api_base": google.url}},
        {"name": "gpt", "model": "openai/gpt-fake", "engine": {**remote, "api_base": provider.url + "/v1"}},
    ]
    cfg = folder / "embeddings.yaml"
    cfg.write_text(yaml.safe_dump({"http": {"port": 0}, "deployments": deployments}))
    n = Node(config=cfg)
    try:
        yield n
    finally:
        assert n.stop() == []


@pytest.fixture(scope="module")
def front(node: Node) -> str:
    match = re.search(r"http front on (http://\S+)", node.output())
    assert match, node.output()
    return match.group(1).rstrip("/")


@pytest.fixture(scope="module")
def sdk(front: str) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=front + "/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        yield client
    finally:
        client.close()


def test_the_openai_sdk_embeds_on_the_local_model(sdk: openai.OpenAI) -> None:
    texts = ["It is raining hard this morning.", "The striker scored twice.", "It is raining hard this morning."]
    answer = sdk.embeddings.create(model="embed", input=texts)  # the SDK asks for base64 and decodes it
    assert answer.object == "list" and answer.model == "embed"
    assert [d.index for d in answer.data] == [0, 1, 2]
    vectors = [d.embedding for d in answer.data]
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert len(vectors[0]) == 128 and math.isclose(norm(vectors[0]), 1.0, rel_tol=1e-4)
    assert answer.usage.prompt_tokens > 0 and answer.usage.total_tokens == answer.usage.prompt_tokens
    as_floats = sdk.embeddings.create(model="embed", input=texts, encoding_format="float")
    assert [d.embedding for d in as_floats.data] == vectors  # float32 both ways, the same numbers
    (one,) = sdk.embeddings.create(model="embed", input=texts[1]).data  # a single string
    assert one.embedding == pytest.approx(vectors[1], abs=1e-5)  # alone, not in a padded batch
    short = sdk.embeddings.create(model="embed", input=texts[:1], dimensions=48).data[0].embedding
    assert len(short) == 48 and math.isclose(norm(short), 1.0, rel_tol=1e-5)


def test_remote_embedding_models_take_a_batch_in_one_call(
    sdk: openai.OpenAI, provider: FakeOpenAI, google: FakeGemini
) -> None:
    texts = [f"remote input {i}" for i in range(256)]
    before = provider.count("/v1/embeddings")
    answer = sdk.embeddings.create(model="remote-embed", input=texts)
    assert provider.count("/v1/embeddings") - before == 1
    # the provider's float32 numbers, relayed as they are (base64 from the provider, base64 to the SDK)
    assert [d.embedding for d in answer.data[:4]] == [openai_server.embedding_of(t) for t in texts[:4]]
    assert answer.usage.prompt_tokens == sum(len(openai_server.tokenize(t)) for t in texts)
    short = sdk.embeddings.create(model="remote-embed", input="remote input 0", dimensions=8).data[0].embedding
    assert short == openai_server.embedding_of("remote input 0", 8)
    before = google.count()
    answer = sdk.embeddings.create(model="gemini-embed", input=texts[:20], encoding_format="float")
    assert google.count() - before == 1
    for item, text in zip(answer.data, texts, strict=False):  # JSON numbers, carried as float32
        assert item.embedding == pytest.approx(gemini_server.embedding_of(text), abs=1e-6)


def test_refused_by_field_over_http(sdk: openai.OpenAI, front: str) -> None:
    with pytest.raises(openai.NotFoundError):  # the openai runtime embeds; the provider's chat model does not
        sdk.embeddings.create(model="gpt", input="hello")
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="no-such-deployment", input="hello")
    with pytest.raises(openai.BadRequestError) as info:
        sdk.embeddings.create(model="embed", input="hello", dimensions=500)
    assert info.value.body["param"] == "dimensions"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as info:
        sdk.embeddings.create(model="embed", input=["fine", " ".join(["word"] * 400)])
    assert info.value.body["param"] == "input[1]"  # type: ignore[index]
    raw = httpx.post(front + "/v1/embeddings", json={"model": "embed", "input": [[1, 2, 3]]}, timeout=60)
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "input"
    raw = httpx.post(
        front + "/v1/embeddings", json={"model": "embed", "input": "x", "encoding_format": "int8"}, timeout=60
    )
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "encoding_format"
    raw = httpx.post(front + "/v1/embeddings", json={"model": "embed", "input": [], "user": "u"}, timeout=60)
    assert raw.status_code == 400 and raw.json()["error"]["param"].startswith("input")


def test_a_generating_deployment_is_refused_naming_model(front: str) -> None:
    raw = httpx.post(
        front + "/v1/chat/completions",
        json={"model": "embed", "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    )
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "model", raw.text
    assert "embedding" in raw.json()["error"]["message"]


def test_models_metrics_and_the_client(node: Node, front: str, sdk: openai.OpenAI) -> None:
    listed = {m.id for m in sdk.models.list()}
    assert {"embed", "remote-embed", "gemini-embed"} <= listed
    sdk.embeddings.create(model="embed", input="counted")
    metrics = httpx.get(front + "/metrics", timeout=60).text
    assert re.search(r'atomr_http_requests_total\{route="/v1/embeddings",status="200"\} [1-9]', metrics), metrics[
        -2000:
    ]
    over_http = sdk.embeddings.create(model="embed", input=["The forecast says snow tomorrow."]).data[0].embedding
    with Client(node.address) as client:
        result = client.embed("embed", ["The forecast says snow tomorrow.", "Stocks fell sharply."])
        assert result.deployment == "embed" and len(result.vectors) == 2 and result.usage.prompt_tokens > 0
        assert result.vectors[0] == pytest.approx(over_http, abs=1e-5)  # the actor path and the HTTP front
        assert client.embed("embed", "The forecast says snow tomorrow.").vectors == [over_http]  # alone: exact
        (alone,) = client.embed("embed", "Stocks fell sharply.", dimensions=16).vectors
        assert len(alone) == 16
        with pytest.raises(InvalidRequestError) as info:
            client.embed("gpt-none", [])
        assert info.value.field.startswith("input")
    lines = [json.loads(line) for line in node.output().splitlines() if line.startswith("{")]
    logged = {
        (x.get("endpoint"), x.get("task"))
        for x in lines
        if x.get("event") == "request" and x.get("deployment") == "embed"
    }
    assert {("/v1/embeddings", "embed"), ("client", "embed")} <= logged, logged  # one log line per request, labelled


@pytest.mark.slow
@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "tokenizers", "onnx")),
    reason="the make-model extra (torch, transformers, onnx) is not installed",
)
def test_remaking_the_embedding_model_is_byte_identical(tmp_path: Path) -> None:
    manifests = remade_manifests(REPO / "scripts" / "make_tiny_embedding_model.py", tmp_path)
    assert manifests[0] == manifests[1]
    assert set(manifests[0]) == {"onnx/model.onnx", "onnx/tokenizer.json", "onnx/embedding_config.json"}


def test_langchain_embeddings(front: str, sdk: openai.OpenAI) -> None:
    """LangChain's OpenAIEmbeddings on the local model: documents in one request, the same vectors
    as the openai SDK's. (Its default check_embedding_ctx_length sends token arrays, which atomr
    refuses naming input: its runtimes take text.)"""
    from langchain_openai import OpenAIEmbeddings

    texts = ["It is raining hard this morning.", "The striker scored twice."]
    lc = OpenAIEmbeddings(
        model="embed", base_url=front + "/v1", api_key="unused", check_embedding_ctx_length=False, max_retries=0
    )
    documents = lc.embed_documents(texts)
    assert documents == [d.embedding for d in sdk.embeddings.create(model="embed", input=texts).data]
    query = lc.embed_query(texts[0])
    assert query == pytest.approx(documents[0], abs=1e-5)  # alone rather than in a padded batch
