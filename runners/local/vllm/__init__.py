"""The `vllm` runtime: vLLM on this machine (`spec` describes it, `runner` runs it)."""
