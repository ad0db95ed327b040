"""The OpenAI-compatible HTTP front, served from a gateway process."""
