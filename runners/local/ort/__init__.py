"""The `ort` runtime: ONNX Runtime GenAI on this machine (`spec` describes it, `runner` runs it)."""
