"""The `mistralrs` runtime: mistral.rs on this machine (`spec` describes it, `runner` runs it)."""
