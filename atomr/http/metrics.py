"""``GET /metrics``: the Prometheus text of the whole cluster (every coordinator's and HTTP
front's metrics, merged by the metrics collector). With keys it asks for one (tenant names and
per-tenant traffic are in it) unless `http.public_paths` lists it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from atomr.core.errors import InferenceError
from atomr.http.plumbing import FrontContext, error_response


def routes(ctx: FrontContext) -> list[Route]:
    async def metrics(request: Request) -> Response:
        refused = ctx.refused(request)
        if refused is not None:
            return refused
        try:
            text = await ctx.backend.metrics()
        except InferenceError as exc:
            return error_response(exc)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return [Route("/metrics", metrics, methods=["GET"])]
