"""The admin API: runtime keys and spend, authenticated with the admin key (``Authorization:
Bearer <admin key>``; the key keeper checks it, in one place for HTTP and the CLI).

``POST /admin/keys`` makes a key (body: tenant, models, rpm, tpm, max_parallel, budget_usd, period,
expires_at, metadata) and answers 201 with its secret, shown this once; ``GET /admin/keys`` lists
them, ``GET /admin/keys/{id}`` shows one with what it spent in its period; ``DELETE
/admin/keys/{id}`` or ``POST /admin/keys/{id}/revoke`` revokes it (refused on every gateway at
once), ``POST /admin/keys/{id}/rotate`` gives it a new secret (the old one stops working).
``GET /admin/spend?group_by=key|tenant|deployment|day|outcome[&since=&until=&key=]`` sums the
spend log.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from atomr.core.errors import InferenceError, InvalidRequestError
from atomr.http.plumbing import FrontContext, bearer, error_response


def routes(ctx: FrontContext) -> list[Route]:
    async def ask(request: Request, op: str, args: dict[str, Any], status: int = 200) -> Response:
        try:
            value = await ctx.backend.keys_admin(op, args, bearer(request))
        except InferenceError as exc:
            ctx.metrics.record("/admin", exc.http_status)
            return error_response(exc)
        ctx.metrics.record("/admin", status)
        body = {"object": "list", "data": value} if isinstance(value, list) else value
        return JSONResponse(body, status_code=status)

    async def create(request: Request) -> Response:
        try:
            raw = await ctx.read_body(request)
            args = json.loads(raw or b"{}")
        except InferenceError as exc:
            return error_response(exc)
        except ValueError:
            return error_response(InvalidRequestError("the body is not valid JSON", field="body"))
        if not isinstance(args, dict):
            return error_response(InvalidRequestError("must be a JSON object", field="body"))
        return await ask(request, "create", args, 201)

    async def list_keys(request: Request) -> Response:
        return await ask(request, "list", {})

    async def show(request: Request) -> Response:
        return await ask(request, "show", {"id": request.path_params["key_id"]})

    async def revoke(request: Request) -> Response:
        return await ask(request, "revoke", {"id": request.path_params["key_id"]})

    async def rotate(request: Request) -> Response:
        return await ask(request, "rotate", {"id": request.path_params["key_id"]})

    async def spend(request: Request) -> Response:
        q = request.query_params
        args: dict[str, Any] = {"group_by": q.get("group_by", "key")}
        for name in ("since", "until"):
            if name in q:
                try:
                    args[name] = float(q[name])
                except ValueError:
                    return error_response(InvalidRequestError("must be a Unix time in seconds", field=name))
        if "key" in q:
            args["key"] = q["key"]
        return await ask(request, "spend", args)

    return [
        Route("/admin/keys", create, methods=["POST"]),
        Route("/admin/keys", list_keys, methods=["GET"]),
        Route("/admin/keys/{key_id}", show, methods=["GET"]),
        Route("/admin/keys/{key_id}", revoke, methods=["DELETE"]),
        Route("/admin/keys/{key_id}/revoke", revoke, methods=["POST"]),
        Route("/admin/keys/{key_id}/rotate", rotate, methods=["POST"]),
        Route("/admin/spend", spend, methods=["GET"]),
    ]
