"""An OpenAI-shaped atomr request as google-genai's (contents, GenerateContentConfig).

- system messages (wherever they stand) -> `system_instruction`, joined by a blank line;
- user messages -> role "user": text parts, and images given as ``data:image/...;base64,`` URLs as
  `inline_data` parts; an http(s) image URL is refused (`invalid_request` naming
  ``messages[i].content[j]``): the API's `file_data` takes only files uploaded to Google;
- assistant messages -> role "model": a text part (when not empty), then one `function_call` part
  per tool call (`args`: its arguments parsed as JSON; arguments that are not a JSON object are
  refused naming ``messages[i].tool_calls[j].function.arguments``);
- tool messages -> `function_response` parts (name: the call's, found by `tool_call_id` in the
  earlier assistant messages; response: the text parsed as JSON when it is an object, else
  ``{"result": text}``); consecutive tool messages share one user turn, as the API wants the
  responses to one model turn together;
- a completion request (`prompt`) -> one user content.

Thought signatures: Gemini's thinking models sign their function calls (`thought_signature` on the
call's part) and want the signature back with the call in the next turn (Gemini 3 refuses a turn
without it). The runner keeps the signatures it received, by call id (`CallMemory`), and puts them
back; a call it did not see (another replica answered, or the history came from elsewhere) gets
Google's documented placeholder ``skip_thought_signature_validator`` on the turn's first call.
Call ids: Gemini's own when it gives one (and then sent back on the call and its response), else
``call_<24 hex>``, unique, which never goes to the API.

Config (`GenerateContentConfig`): only what the caller set: max_output_tokens, temperature, top_p,
top_k, stop_sequences, seed, candidate_count (n), presence/frequency penalty, response_logprobs
and logprobs (top_logprobs, else 1), response_mime_type and response_json_schema
(json_object / json_schema), thinking (reasoning_effort: a thinking level and its thoughts
returned; "none" a thinking budget of 0), tools (`function_declarations` with
`parameters_json_schema`), tool_config (tool_choice: AUTO / NONE / ANY, and
`allowed_function_names` for a named function). Automatic function calling and continuation off.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from atomr.core.errors import InvalidRequestError
from atomr.core.messages import Message
from atomr.core.types import InferenceRequest

_DATA_URL = re.compile(r"^data:(image/[A-Za-z0-9.+-]+);base64,(.*)$", re.S)
SKIP_SIGNATURE = base64.urlsafe_b64decode("skip_thought_signature_validator")
GENERATED_ID = "call_"  # the prefix of the ids this runner makes up (never sent to the API)
TOOL_MODES = {"none": "NONE", "auto": "AUTO", "required": "ANY", "function": "ANY"}
THINKING_LEVELS = {"minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM", "high": "HIGH", "xhigh": "XHIGH"}


class CallMemory:
    """What the runner must send back with a call it answered: its thought signature, and whether
    its id is Gemini's own. Bounded (oldest forgotten first)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._calls: OrderedDict[str, tuple[bytes | None, bool]] = OrderedDict()

    def put(self, call_id: str, signature: bytes | None, own_id: bool) -> None:
        if signature is None and not own_id:
            return
        self._calls[call_id] = (signature, own_id)
        self._calls.move_to_end(call_id)
        while len(self._calls) > self.size:
            self._calls.popitem(last=False)

    def signature(self, call_id: str) -> bytes | None:
        return self._calls.get(call_id, (None, False))[0]

    def is_geminis(self, call_id: str) -> bool:
        return self._calls.get(call_id, (None, False))[1]


def _user_parts(types: Any, m: Message, where: str) -> list[Any]:
    if m.content is None:
        return []
    if isinstance(m.content, str):
        return [types.Part(text=m.content)]
    parts: list[Any] = []
    for j, part in enumerate(m.content):
        at = f"{where}.content[{j}]"
        if part.type == "text":
            parts.append(types.Part(text=part.text))
        elif part.type == "image_url":
            match = _DATA_URL.match(part.url)
            if match is None:
                raise InvalidRequestError(
                    f"{at}: gemini takes images as data:image/...;base64 URLs, not links "
                    "(the API reads only files uploaded to Google)",
                    field=at,
                )
            try:
                data = base64.b64decode(match.group(2), validate=True)
            except (binascii.Error, ValueError):
                raise InvalidRequestError(f"{at}.image_url.url: the data is not valid base64", field=at) from None
            parts.append(types.Part(inline_data=types.Blob(mime_type=match.group(1).lower(), data=data)))
        else:  # refused earlier by the capability check (passthrough); never sent silently
            raise InvalidRequestError(f"{at}: gemini takes text and image parts, not {part.type}", field=f"{at}.type")
    return parts


def _model_parts(types: Any, m: Message, where: str, memory: CallMemory | None) -> list[Any]:
    parts: list[Any] = [types.Part(text=m.text)] if m.text or not m.tool_calls else []
    for j, call in enumerate(m.tool_calls):
        args = call.arguments_object(f"{where}.tool_calls[{j}].function.arguments")
        signature = memory.signature(call.id) if memory is not None else None
        if signature is None and j == 0:
            signature = SKIP_SIGNATURE
        own = memory is not None and memory.is_geminis(call.id)
        fn = types.FunctionCall(name=call.name, args=args, id=call.id if own else None)
        parts.append(types.Part(function_call=fn, thought_signature=signature))
    return parts


def _call_name(messages: Sequence[Message], before: int, call_id: str) -> str | None:
    for m in reversed(messages[:before]):
        for call in m.tool_calls:
            if call.id == call_id:
                return call.name
    return None


def _response_part(types: Any, messages: Sequence[Message], i: int, memory: CallMemory | None) -> Any:
    m = messages[i]
    where = f"messages[{i}]"
    if isinstance(m.content, tuple):
        for j, part in enumerate(m.content):
            if part.type != "text":
                raise InvalidRequestError(
                    f"{where}.content[{j}]: gemini takes text only in a tool result", field=f"{where}.content[{j}]"
                )
    call_id = m.tool_call_id or ""
    name = _call_name(messages, i, call_id)
    if name is None:
        raise InvalidRequestError(
            f"{where}.tool_call_id {call_id!r} names no tool call of an earlier assistant message",
            field=f"{where}.tool_call_id",
        )
    try:
        value = json.loads(m.text)
    except ValueError:
        value = None
    response = value if isinstance(value, dict) else {"result": m.text}
    own = memory is not None and memory.is_geminis(call_id)
    return types.Part(
        function_response=types.FunctionResponse(name=name, response=response, id=call_id if own else None)
    )


def contents_of(
    types: Any, request: InferenceRequest, memory: CallMemory | None = None
) -> tuple[list[Any], str | None]:
    """(contents, system instruction) of `request`."""
    if request.messages is None:
        return [types.Content(role="user", parts=[types.Part(text=request.prompt or "")])], None
    messages = request.messages
    system: list[str] = []
    contents: list[Any] = []
    after_tools = False
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if m.role == "system":
            system.append(m.text)
            continue
        if m.role == "tool":
            part = _response_part(types, messages, i, memory)
            if after_tools:
                contents[-1].parts.append(part)
            else:
                contents.append(types.Content(role="user", parts=[part]))
            after_tools = True
            continue
        after_tools = False
        if m.role == "assistant":
            contents.append(types.Content(role="model", parts=_model_parts(types, m, where, memory)))
        else:
            contents.append(types.Content(role="user", parts=_user_parts(types, m, where)))
    return contents, ("\n\n".join(system) if system else None)


def config_of(types: Any, request: InferenceRequest, instruction: str | None) -> Any:
    """The `GenerateContentConfig` of `request`: only what its caller set."""
    p = request.params
    fields: dict[str, Any] = {
        "system_instruction": instruction,
        "max_output_tokens": p.max_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "top_k": p.top_k,
        "stop_sequences": list(p.stop) or None,
        "seed": p.seed,
        "candidate_count": p.n if p.n != 1 else None,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
    }
    if p.logprobs:
        fields["response_logprobs"] = True
        fields["logprobs"] = p.top_logprobs or 1  # top candidates per step (1: the chosen token's)
    fmt = request.response_format
    if fmt is not None and fmt.type in ("json_object", "json_schema"):
        fields["response_mime_type"] = "application/json"
        if fmt.type == "json_schema":
            fields["response_json_schema"] = dict(fmt.schema or {})
    effort = request.reasoning_effort
    if effort == "none":
        fields["thinking_config"] = types.ThinkingConfig(thinking_budget=0)
    elif effort is not None:
        fields["thinking_config"] = types.ThinkingConfig(
            thinking_level=THINKING_LEVELS.get(effort, "HIGH"), include_thoughts=True
        )
    if request.tools:
        declarations = [
            types.FunctionDeclaration(name=t.name, description=t.description, parameters_json_schema=dict(t.schema))
            for t in request.tools
        ]
        fields["tools"] = [types.Tool(function_declarations=declarations)]
    choice = request.tool_choice
    if choice is not None:
        calling = types.FunctionCallingConfig(
            mode=TOOL_MODES[choice.mode], allowed_function_names=[choice.name] if choice.name else None
        )
        fields["tool_config"] = types.ToolConfig(function_calling_config=calling)
    return types.GenerateContentConfig(
        **{k: v for k, v in fields.items() if v is not None},
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        automatic_continuation=False,
    )
