"""OpenAI's Responses API over any deployment: ``POST /v1/responses`` translated to atomr's request
model and served by the flow every inference endpoint shares, with a bounded store of answers
for ``previous_response_id`` and ``GET`` / ``DELETE /v1/responses/{id}``.

`protocol` reads bodies, `rendering` writes Response objects, `streaming` their events,
`store` keeps answers, `endpoints` holds the routes.
"""

from atomr.http.responses_api.endpoints import routes

__all__ = ["routes"]
