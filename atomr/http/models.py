"""``GET /v1/models``: the model names the caller's tenant may use (deployments, aliases, routes
and cascades), in OpenAI's list format."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from atomr.core.errors import InferenceError
from atomr.http.plumbing import FrontContext, error_response


def routes(ctx: FrontContext) -> list[Route]:
    async def models(request: Request) -> Response:
        try:
            tenant = ctx.authenticate(request)
        except InferenceError as exc:
            return error_response(exc)
        names = [n for n in ctx.backend.model_names() if tenant is None or tenant.allows(n)]
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "atomr"} for n in sorted(names)]
        return JSONResponse({"object": "list", "data": data})

    return [Route("/v1/models", models, methods=["GET"])]
