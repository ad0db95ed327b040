"""The `litellm` runtime: any provider through the LiteLLM SDK (`spec` describes it, `runner` calls it)."""
