"""The `litellm` runtime, described without importing its SDK."""

from atomr.runners.remote.options import remote_spec

SPEC = remote_spec("litellm", "LiteLLMRunner", "litellm", ("litellm",))
