"""The `anthropic` runtime, described without importing its SDK."""

from atomr.runners.remote.options import remote_spec

SPEC = remote_spec("anthropic", "AnthropicRunner", "anthropic", ("anthropic",))
