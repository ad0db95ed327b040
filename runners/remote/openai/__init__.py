"""The `openai` runtime: OpenAI's API or any OpenAI-compatible server (`spec` describes it, `runner` calls it)."""
