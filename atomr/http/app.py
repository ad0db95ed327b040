"""The OpenAI-compatible HTTP application (Starlette), over an `InferenceBackend`.

Routes, one module per group: ``POST /v1/chat/completions`` and ``POST /v1/completions``
(`chat`), ``POST /v1/embeddings`` (`embeddings`), ``POST /v1/messages`` (`anthropic_messages`),
``POST /v1/responses`` and ``GET`` / ``DELETE /v1/responses/{id}`` (`responses_api`),
``GET /v1/models`` (`models`), ``GET /healthz`` and ``GET /readyz`` (`health`), ``GET /metrics``
(`metrics`), ``GET /openapi.json`` (`openapi`), ``/admin/keys`` and ``/admin/spend`` (`admin`).
What they share (auth, tenant quotas, body reading, error responses) is in `plumbing`. This
package knows nothing of actors: the process that hosts the front supplies the backend
(`atomr.http.front`, over the port in `atomr.http.port`).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware

from atomr.core.tenants import TenantTable
from atomr.http import admin, anthropic_messages, chat, embeddings, health, metrics, models, openapi, responses_api
from atomr.http.plumbing import FrontContext, exception_handlers
from atomr.http.port import InferenceBackend
from atomr.http.settings import HttpSettings
from atomr.http.workers import WorkerPlace
from atomr.observability import tracing
from atomr.observability.metrics import HttpMetrics


def make_app(
    backend: InferenceBackend,
    tenants: TenantTable,
    settings: HttpSettings,
    http_metrics: HttpMetrics,
    place: WorkerPlace | None = None,
) -> Starlette:
    ctx = FrontContext(backend, tenants, settings, http_metrics, place or WorkerPlace())
    routes = [
        *chat.routes(ctx),
        *embeddings.routes(ctx),
        *anthropic_messages.routes(ctx),
        *responses_api.routes(ctx),
        *models.routes(ctx),
        *health.routes(ctx),
        *metrics.routes(ctx),
        *openapi.routes(ctx),
        *admin.routes(ctx),
    ]
    # Ends each inference request's span once its answer is written; absent when tracing is off.
    middleware = [Middleware(tracing.HttpTracing)] if tracing.enabled() else []
    return Starlette(routes=routes, exception_handlers=exception_handlers(), middleware=middleware)
