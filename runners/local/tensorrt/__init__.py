"""The `tensorrt` runtime: TensorRT-LLM on an NVIDIA GPU (`spec` describes it, `runner` runs it)."""
