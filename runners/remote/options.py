"""What every remote-API runtime shares before any SDK is imported: its `engine:` options and the
shape of its spec (see `atomr.runners.remote.base` for what the options mean).

Provider-specific options (`organization`, `api_version`, `litellm_args`, ...) are read by each
provider's runner; unknown keys are passed over as before, so the model allows extra keys.
"""

from __future__ import annotations

from atomr.runners.spec import OpenEngineOptions, RuntimeSpec


class RemoteOptions(OpenEngineOptions):
    api_base: str | None = None
    api_key_env: str | None = None
    api_key_file: str | None = None
    timeout_s: float = 60.0
    # request headers passed on to the provider as the caller sent them (names, any case)
    forward_headers: tuple[str, ...] = ()


def remote_spec(name: str, runner_class: str, package: str, prefixes: tuple[str, ...]) -> RuntimeSpec:
    """The spec of a remote-API runtime whose runner is `atomr.runners.remote.<name>.runner:<runner_class>`,
    installed by the `remote` extra, meant by model references `<prefix>/<model>`."""
    return RuntimeSpec(
        name=name,
        runner=f"atomr.runners.remote.{name}.runner:{runner_class}",
        local=False,
        package=package,
        extra="remote",
        prefixes=prefixes,
        options=RemoteOptions,
    )
