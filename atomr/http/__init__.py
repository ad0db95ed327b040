"""The OpenAI-compatible HTTP front, served from a gateway process.

One module per endpoint group (`chat`, `models`, `health`, `metrics`), the app factory (`app`),
shared request plumbing (`plumbing`), the wire format (`openai_wire`, `schemas`), the OpenAPI
document built from the schemas (`openapi`), the server (`front`) and the port through which it
reaches the cluster (`port`). It knows no actor and no Thespian.

May import: `atomr.serving`, `atomr.observability`, `atomr.config`, `atomr.runners`, `atomr.core`.
"""
