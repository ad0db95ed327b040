"""Model runners: one module per backend, each implementing `atomr.core.runner.ModelRunner`.

`atomr.runners.local.*` drive engines in this process (ONNX Runtime GenAI, vLLM, mistral.rs,
TensorRT-LLM); `atomr.runners.remote.*` call provider APIs with their official SDKs; `atomr.runners.common`
holds pure-Python helpers they share. Runners know nothing of actors. Importing this package, or
any subpackage, imports no engine: each runner module imports its engine itself, so a
remote-only install never loads torch or onnxruntime.
"""
