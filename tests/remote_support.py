"""Helpers shared by the remote-runner tests: deployments that point at a fake provider, running
a runner on a fresh loop, keys, and checking that a key never shows."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from atomr.config import deployment_from_dict
from atomr.core.deployment import Deployment
from atomr.core.errors import InferenceError
from atomr.core.runner import ModelRunner

T = TypeVar("T")
R = TypeVar("R", bound=ModelRunner)

NO_RETRY = {"max_attempts": 1}
FAST_RETRY = {"max_attempts": 3, "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "jitter_s": 0.0}
NO_BREAKER = {"failure_threshold": 1000}


def new_key(prefix: str = "sk-atomr-") -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def remote_deployment(
    model: str,
    api_base: str,
    key_env: str,
    *,
    retry: dict[str, Any] | None = None,
    circuit: dict[str, Any] | None = None,
    name: str = "remote",
    **engine: Any,
) -> Deployment:
    """A deployment of `model` (its provider prefix names the runtime) served by the provider at
    `api_base` with the key in `key_env`; no retries and no breaker unless given."""
    options = {
        "api_base": api_base,
        "api_key_env": key_env,
        "retry": NO_RETRY if retry is None else retry,
        "circuit": NO_BREAKER if circuit is None else circuit,
        **engine,
    }
    return deployment_from_dict({"name": name, "model": model, "engine": options})


@contextlib.asynccontextmanager
async def load(runner: R) -> AsyncIterator[R]:
    await runner.load()
    try:
        yield runner
    finally:
        await runner.unload()


def run(body: Callable[[], Awaitable[T]]) -> T:
    """Run `body` on a fresh event loop."""

    async def main() -> T:
        try:
            return await body()
        finally:
            gc.collect()  # let the SDK's abandoned stream generators close on this loop
            await asyncio.sleep(0)

    return asyncio.run(main())


def with_runner(runner: R, body: Callable[[R], Awaitable[None]]) -> None:
    """Load the runner, run `body` on one fresh event loop, unload it."""

    async def main() -> None:
        async with load(runner) as loaded:
            await body(loaded)

    run(main)


def assert_key_hidden(err: BaseException | None, key: str) -> None:
    assert isinstance(err, InferenceError), err
    for shown in (str(err), repr(err), err.message, repr(err.info()), repr(err.details)):
        assert key not in shown


def assert_key_nowhere(
    key: str, err: BaseException | None, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """Neither the error (masked as ***) nor the logs nor the output show the key."""
    assert_key_hidden(err, key)
    assert isinstance(err, InferenceError) and "***" in err.message, err
    assert key not in caplog.text
    out = capfd.readouterr()
    assert key not in out.out and key not in out.err
