"""Model runners (installed as `atomr.runners`): one package per runtime, each implementing
`atomr.core.runner.ModelRunner`.

`local/*` drive engines in this process (ONNX Runtime GenAI, vLLM, mistral.rs, TensorRT-LLM);
`remote/*` call provider APIs with their official SDKs; `common` holds pure-Python helpers they
share. Each runtime's package has a `spec.py` (an engine-free `RuntimeSpec`) and its runner;
`catalog.py` is the one table of runtimes. Runners know nothing of actors. Importing this package,
any spec or the catalog imports no engine: each runner imports its engine itself, so a
remote-only install never loads torch or onnxruntime.

May import: `atomr.core` (and `atomr.models`, the built-in model files). Never Thespian, actors,
config, serving or the HTTP front.
"""
