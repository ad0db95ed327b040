"""Counting a chat's prompt tokens as mistral.rs renders it (chat template, BOS): by rendering the
checkpoint's template with jinja2 and tokenizing with mistral.rs once a check at load agrees, else
by a one-token greedy probe of the same messages.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from atomr.runners.local.mistralrs.engine import MODEL_NAME

# Conversations that check, at load, that the Python rendering of the chat template counts the
# same prompt tokens as mistral.rs (a model whose template refuses one of them skips it).
_CHECK_CHATS: tuple[list[dict[str, Any]], ...] = (
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "What is an actor?"},
    ],
)


Chat = list[dict[str, Any]]
Tools = list[dict[str, Any]] | None


def _python_chat_template(folder: Path) -> Callable[[Chat, Tools], str] | None:
    """The checkpoint's chat template rendered with jinja2 the way HF tokenizers do, if possible.

    None when jinja2 is not installed or no template is found in `chat_template.jinja` or
    `tokenizer_config.json`.
    """
    try:
        jinja2 = importlib.import_module("jinja2")
        sandbox = importlib.import_module("jinja2.sandbox")
    except ImportError:
        return None
    try:
        cfg_file = folder / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        jinja_file = folder / "chat_template.jinja"
        source = jinja_file.read_text() if jinja_file.is_file() else cfg.get("chat_template")
    except (OSError, ValueError):
        return None
    if isinstance(source, list):  # named templates: the default one
        source = next((t.get("template") for t in source if isinstance(t, dict) and t.get("name") == "default"), None)
    if not isinstance(source, str) or not source:
        return None

    def special(name: str) -> str:
        value = cfg.get(name)
        value = value.get("content") if isinstance(value, dict) else value
        return value if isinstance(value, str) else ""

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        template = env.from_string(source)
    except jinja2.TemplateError:
        return None
    tokens = {name: special(name) for name in ("bos_token", "eos_token", "unk_token")}

    def render(messages: Chat, tools: Tools) -> str:
        return str(template.render(messages=messages, tools=tools, add_generation_prompt=True, **tokens))

    return render


class ChatPrompts:
    """Prompt token counts of chats as mistral.rs renders them (chat template, BOS).

    mistral.rs's Python API renders templates only inside a request. The exact count is a
    one-token greedy probe of the same messages, which costs a whole prefill (mistral.rs's prefix
    cache did not make the request after it cheaper). So when jinja2 is installed, the template is
    rendered here and tokenized by mistral.rs (`tokenize_text`), after checking at load that this
    gives mistral.rs's own counts; otherwise, or when that check fails, every chat is probed.
    """

    def __init__(self, mr: Any, runner: Any, folder: Path) -> None:
        self._mr = mr
        self._runner = runner
        self._render = _python_chat_template(folder)
        self.method = "template" if self._render is not None and self._rendering_agrees() else "probe"

    def count(self, messages: Chat, tools: Tools = None) -> int:
        """The prompt's tokens with `tools` (OpenAI's tool dicts) rendered by the template too."""
        if self.method == "template":
            try:
                return self._rendered(messages, tools)
            except Exception:  # noqa: BLE001 - the template refused the messages here: mistral.rs says why
                pass
        return self.probe(messages, tools)

    def probe(self, messages: Chat, tools: Tools = None) -> int:
        greedy = {"max_tokens": 1, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
        schemas = [json.dumps(t) for t in tools] if tools else None
        request = self._mr.ChatCompletionRequest(model=MODEL_NAME, messages=messages, tool_schemas=schemas, **greedy)
        return int(self._runner.send_chat_completion_request(request).usage.prompt_tokens)

    def _rendered(self, messages: Chat, tools: Tools = None) -> int:
        assert self._render is not None
        return len(self._runner.tokenize_text(self._render(messages, tools), False, None))

    def _rendering_agrees(self) -> bool:
        checked = 0
        for chat in _CHECK_CHATS:
            try:
                expected = self.probe(chat)
            except Exception:  # noqa: BLE001 - this model's template refuses this conversation
                continue
            try:
                if self._rendered(chat) != expected:
                    return False
            except Exception:  # noqa: BLE001 - jinja2 fails where mistral.rs's renderer works
                return False
            checked += 1
        return checked > 0
