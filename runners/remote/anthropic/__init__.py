"""The `anthropic` runtime: Anthropic's Messages API (`spec` describes it, `runner` calls it)."""
