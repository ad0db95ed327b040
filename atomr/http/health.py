"""``GET /healthz`` and ``GET /health`` (the process is up; ``/health`` is the name vLLM's server
and the load tools that probe it use) and ``GET /readyz`` (every deployment has a ready replica;
503 otherwise, or when the cluster does not answer). With keys, they ask for one when
`http.public_paths` leaves them out (by default it lists all three)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from atomr.core.errors import InferenceError
from atomr.http.plumbing import FrontContext, error_response


def routes(ctx: FrontContext) -> list[Route]:
    async def healthz(request: Request) -> Response:
        return ctx.refused(request) or JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        refused = ctx.refused(request)
        if refused is not None:
            return refused
        try:
            ready, states = await ctx.backend.readiness()
        except InferenceError as exc:
            return error_response(exc)
        return JSONResponse({"ready": ready, "deployments": states}, status_code=200 if ready else 503)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/health", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
