"""The `gemini` runtime: Google's Gemini API (`spec` describes it, `runner` calls it)."""
