"""Runners for engines that run on this machine (ONNX Runtime GenAI, vLLM, mistral.rs, TensorRT-LLM).

Each module imports its engine only when it is imported itself; this package imports none.
"""
