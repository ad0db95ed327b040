"""An OpenAI-shaped atomr request as the keyword arguments of Anthropic's `messages.create`.

- system messages (wherever they stand) -> the `system` field, joined by a blank line;
- user text and image parts -> `text` / `image` blocks: a ``data:image/<type>;base64,...`` URL as a
  `base64` source (jpeg, png, gif, webp, as the API takes), an http(s) URL as a `url` source;
- an assistant message -> its text block (when not empty) then one `tool_use` block per tool call,
  `input` its arguments parsed as JSON (arguments that are not a JSON object are an
  `invalid_request` naming ``messages[i].tool_calls[j].function.arguments``); thinking blocks this
  runner received before those calls are put back in front of them (`ThinkingCache`), as the API
  wants when the model thinks around tool use;
- tool messages -> `tool_result` blocks (``tool_use_id`` = ``tool_call_id``; text or text and image
  content) in one user turn: consecutive tool messages, and a user message right after them,
  share that turn, since the API wants the results of one assistant turn in the next user turn;
- a completion request (`prompt`) -> one user message;
- tools -> `tools` ({name, description, input_schema}); tool_choice none/auto/required/function ->
  {"type": none/auto/any/tool(name)}; ``parallel_tool_calls: false`` ->
  ``disable_parallel_tool_use`` (on tool_choice auto when the caller gave no tool_choice);
- response_format json_schema -> ``output_config.format`` ({"type": "json_schema", "schema"}),
  reasoning_effort minimal/low/medium/high/xhigh -> ``output_config.effort`` (minimal as low; none
  sends nothing: thinking is off unless a deployment turns it on), `user` -> ``metadata.user_id``;
- max_tokens always (the API requires it: the caller's, else the default limit), stop ->
  `stop_sequences`; temperature, top_p and top_k only when the caller set them (in `extra_body`:
  the SDK 2.x does not type them).
"""

from __future__ import annotations

import binascii
import json
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from atomr.core.errors import InvalidRequestError
from atomr.core.messages import ContentPart, Message
from atomr.core.types import InferenceRequest

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_DATA_URL = re.compile(r"^data:(image/[A-Za-z0-9.+-]+);base64,(.*)$", re.S)
EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh"}


class ThinkingCache:
    """The thinking blocks (with their signatures) of answers that called tools, by the id of
    their first call, so that the next turn can send them back before those calls. Bounded; a
    replica that did not see the answer sends the calls without them."""

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self._blocks: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    def put(self, call_id: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        self._blocks[call_id] = blocks
        self._blocks.move_to_end(call_id)
        while len(self._blocks) > self.size:
            self._blocks.popitem(last=False)

    def get(self, call_id: str) -> list[dict[str, Any]]:
        return list(self._blocks.get(call_id, ()))


def image_block(part: ContentPart, where: str) -> dict[str, Any]:
    """An `image` block for an image_url part (`where`: ``messages[i].content[j]``)."""
    url = part.url
    if url.startswith("data:"):
        match = _DATA_URL.match(url)
        if match is None:
            raise InvalidRequestError(
                f"{where}.image_url.url must be a base64 data URL (data:image/png;base64,...)",
                field=f"{where}.image_url.url",
            )
        media_type, data = match.group(1).lower(), match.group(2)
        if media_type not in IMAGE_TYPES:
            raise InvalidRequestError(
                f"{where}.image_url.url: anthropic takes {', '.join(IMAGE_TYPES)} images, not {media_type}",
                field=f"{where}.image_url.url",
            )
        try:
            binascii.a2b_base64(data)
        except (binascii.Error, ValueError):
            raise InvalidRequestError(
                f"{where}.image_url.url: the data is not valid base64", field=f"{where}.image_url.url"
            ) from None
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def content_blocks(m: Message, where: str) -> list[dict[str, Any]]:
    """The text and image blocks of a user (or tool) message's content."""
    if m.content is None:
        return []
    if isinstance(m.content, str):
        return [{"type": "text", "text": m.content}]
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(m.content):
        if part.type == "text":
            blocks.append({"type": "text", "text": part.text})
        elif part.type == "image_url":
            blocks.append(image_block(part, f"{where}.content[{j}]"))
        else:  # refused earlier by the capability check (passthrough); never sent silently
            raise InvalidRequestError(
                f"{where}.content[{j}]: anthropic takes text and image parts, not {part.type}",
                field=f"{where}.content[{j}].type",
            )
    return blocks


def tool_use_blocks(m: Message, where: str, thinking: ThinkingCache | None) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if m.tool_calls and thinking is not None:
        blocks += thinking.get(m.tool_calls[0].id)
    text = m.text
    if text:
        blocks.append({"type": "text", "text": text})
    for j, call in enumerate(m.tool_calls):
        args = call.arguments_object(f"{where}.tool_calls[{j}].function.arguments")
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": args})
    return blocks or [{"type": "text", "text": text}]


def tool_result_block(m: Message, where: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.tool_call_id}
    if isinstance(m.content, str) or m.content is None:
        block["content"] = m.content or ""
    else:
        block["content"] = content_blocks(m, where)
    return block


def chat_messages(
    messages: Sequence[Message], thinking: ThinkingCache | None = None
) -> tuple[list[str], list[dict[str, Any]]]:
    """(system texts, Anthropic messages) of an atomr chat."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    after_tools = False  # the last turn in `out` is a user turn of tool results
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if m.role == "system":
            system.append(m.text)
            continue
        if m.role == "tool":
            block = tool_result_block(m, where)
            if after_tools:
                out[-1]["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
            after_tools = True
            continue
        if m.role == "user":
            blocks = content_blocks(m, where)
            if after_tools:  # text after the results, in the same user turn
                out[-1]["content"].extend(blocks)
            else:
                out.append({"role": "user", "content": blocks})
        else:
            out.append({"role": "assistant", "content": tool_use_blocks(m, where, thinking)})
        after_tools = False
    return system, out


def tool_choice_of(request: InferenceRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    parallel_off = request.parallel_tool_calls is False and bool(request.tools)
    if choice is None:
        return {"type": "auto", "disable_parallel_tool_use": True} if parallel_off else None
    out: dict[str, Any]
    if choice.mode == "none":
        return {"type": "none"}
    if choice.mode == "required":
        out = {"type": "any"}
    elif choice.mode == "function":
        out = {"type": "tool", "name": choice.name}
    else:
        out = {"type": "auto"}
    if parallel_off:
        out["disable_parallel_tool_use"] = True
    return out


def request_kwargs(request: InferenceRequest, model: str, thinking: ThinkingCache | None = None) -> dict[str, Any]:
    """The keyword arguments of `messages.create` for `request` (without `stream`)."""
    p = request.params
    if request.messages is not None:
        system, messages = chat_messages(request.messages, thinking)
    else:
        system, messages = [], [{"role": "user", "content": [{"type": "text", "text": request.prompt or ""}]}]
    if not messages:
        raise InvalidRequestError("anthropic needs at least one user or assistant message", field="messages")
    body: dict[str, Any] = {"model": model, "max_tokens": p.max_new_tokens, "messages": messages}
    if system:
        body["system"] = "\n\n".join(system)
    if p.stop:
        body["stop_sequences"] = list(p.stop)
    if request.tools:
        body["tools"] = [
            {"name": t.name, **({"description": t.description} if t.description else {}), "input_schema": t.schema}
            for t in request.tools
        ]
    choice = tool_choice_of(request)
    if choice is not None:
        body["tool_choice"] = choice
    output: dict[str, Any] = {}
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema":
        output["format"] = {"type": "json_schema", "schema": dict(fmt.schema or {})}
    if request.reasoning_effort in EFFORTS:
        output["effort"] = EFFORTS[request.reasoning_effort]
    if output:
        body["output_config"] = output
    if request.user is not None:
        body["metadata"] = {"user_id": request.user}
    extra = {
        name: value
        for name, value in (("temperature", p.temperature), ("top_p", p.top_p), ("top_k", p.top_k))
        if value is not None
    }
    if extra:
        body["extra_body"] = extra
    return body


def dumps_input(value: Any) -> str:
    """A whole tool_use block's `input` as the JSON text of OpenAI's `arguments`."""
    return json.dumps(value if value is not None else {}, ensure_ascii=False, separators=(",", ":"))
