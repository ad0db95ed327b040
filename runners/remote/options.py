"""The `engine:` options every remote-API runtime takes (see `atomr.runners.remote.base`).

Provider-specific options (`organization`, `api_version`, `litellm_args`, ...) are read by each
provider's runner; unknown keys are passed over as before, so the model allows extra keys.
"""

from __future__ import annotations

from atomr.runners.spec import OpenEngineOptions


class RemoteOptions(OpenEngineOptions):
    api_base: str | None = None
    api_key_env: str | None = None
    api_key_file: str | None = None
    timeout_s: float = 60.0
