"""Reading a JSON request body into its pydantic model, for every wire the front speaks: one
decode, one validation, and every problem an `InvalidRequestError` naming the parameter the way
the APIs do (``messages[0].content``), quoting at most a short prefix of what was sent."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from atomr.core.errors import InvalidRequestError

M = TypeVar("M", bound=BaseModel)


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "function-after[...]") or part.startswith(("list[", "dict[")):
            continue  # pydantic's union-branch names, not parameters
        else:
            out += f".{part}" if out else part
    return out


def _invalid(exc: ValidationError) -> InvalidRequestError:
    err = exc.errors(include_url=False)[0]
    param = _param(tuple(err["loc"]))
    if err["type"] in ("model_type", "model_attributes_type"):  # an object was expected
        if not param:
            return InvalidRequestError("the body must be a JSON object", field="body")
        return InvalidRequestError(f"'{param}' must be an object", field=param)
    if err["type"] == "missing":
        return InvalidRequestError(f"'{param}' is required", field=param)
    if err["type"] == "extra_forbidden":
        return InvalidRequestError(f"'{param}' is not taken by this endpoint", field=param)
    return InvalidRequestError(f"'{param}': {err['msg']}", field=param or "body")


def decode_body(raw: bytes, model: type[M]) -> tuple[dict[str, Any], M]:
    """The body as JSON (as the caller sent it) and as `model`."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to be a request
        raise InvalidRequestError(f"the body is not valid JSON: {exc}", field="body") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("the body must be a JSON object", field="body")
    try:
        # strict: a parameter's JSON type is the documented one ("10" is no max_tokens, "yes" no
        # stream); an integer still passes where a number is due
        return data, model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise _invalid(exc) from None
