"""Fixtures of the runner contract: per test class (one runtime), its event loop and its runner,
loaded once; per test, a fresh adapter (its fake's calls and knobs forgotten) and `on`, which
runs a coroutine on the class's loop."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest

from atomr.core.runner import ModelRunner
from tests.runners.contract import ERRORS, On, RuntimeAdapter


@pytest.fixture(scope="class")
def adapter(request: pytest.FixtureRequest) -> RuntimeAdapter:
    found = getattr(request.cls, "adapter", None)
    assert isinstance(found, RuntimeAdapter), "a contract test class names its runtime's adapter"
    return found


@pytest.fixture(scope="class")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    gc.collect()  # an SDK's abandoned stream generators close on this loop, before it closes
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture(scope="class")
def environment(adapter: RuntimeAdapter) -> Iterator[None]:
    """The runtime's package is there (else skip, or fail where CI requires it); its settings."""
    adapter.require()
    with adapter.environment():
        yield


@pytest.fixture(scope="class")
def runner(adapter: RuntimeAdapter, loop: asyncio.AbstractEventLoop, environment: None) -> Iterator[ModelRunner]:
    """The runtime's runner, loaded once for its class (an engine, or a fake's client)."""
    r = loop.run_until_complete(adapter.start())
    try:
        yield r
    finally:
        loop.run_until_complete(adapter.stop(r))


@pytest.fixture
def on(adapter: RuntimeAdapter, loop: asyncio.AbstractEventLoop, runner: ModelRunner) -> On[Any]:
    adapter.fresh()

    return loop.run_until_complete


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A runner bug the contract shows is a strict xfail, with its reason, until it is fixed."""
    for item in items:
        adapter = getattr(getattr(item, "cls", None), "adapter", None)
        reason = getattr(adapter, "known_issues", {}).get(item.name)
        if reason:
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Cases that depend on the runtime: the errors every provider shares, then its own; the
    finish reasons its adapter lists."""
    adapter = getattr(metafunc.cls, "adapter", None)
    if "error_case" in metafunc.fixturenames:
        cases = (*ERRORS, *getattr(adapter, "more_errors", ()))
        metafunc.parametrize("error_case", cases, ids=[case.id for case in cases])
    if "finish_case" in metafunc.fixturenames:
        reasons = getattr(adapter, "finish_reasons", ())
        metafunc.parametrize("finish_case", reasons, ids=[served for served, _ in reasons])
