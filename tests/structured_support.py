"""What the structured-output and tool-call tests of every local engine share: the tools, the
schemas, the 50 prompts, the calls the built-in model was trained to make, and the checks."""

from __future__ import annotations

import asyncio
from typing import Any

from atomr.core.messages import ResponseFormat, Tool, ToolCall, ToolChoice
from atomr.core.runner import ModelRunner
from atomr.core.types import Chunk, InferenceRequest, Message, SamplingParams, assemble_choices
from tests.runners.support import collect

WEATHER = Tool(
    "get_weather",
    "Get the weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = Tool(
    "get_time",
    "Get the time in a timezone.",
    {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
)
TOOLS = (WEATHER, TIME)
# Bounded strings and numbers: the answers of a tiny model end within max_tokens whatever it writes.
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "maxLength": 30},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
        "mood": {"enum": ["calm", "busy", "sunny"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    },
    "required": ["answer", "confidence", "mood", "tags"],
    "additionalProperties": False,
}
BOOKING = Tool(
    "book",
    None,
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "people": {"type": "integer", "minimum": 1, "maximum": 12},
            "at": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
        },
        "required": ["city", "people", "at"],
        "additionalProperties": False,
    },
)
QUESTIONS = [
    "What is an actor?",
    "How do actors talk?",
    "What happens when an actor fails?",
    "What is greedy decoding?",
    "What does a seed do?",
    "Why do servers batch requests?",
    "What is the weather today?",
    "What will the weather be tomorrow?",
    "How do I make soup?",
    "How do I bake bread?",
    "What does a garden need?",
    "What color is the fox?",
    "Who lives in the library?",
    "Hello!",
    "Say hi.",
    "What is two plus two?",
    "Count to five.",
]
# 50 distinct prompts: the model's own questions, then phrasings it never saw.
PROMPTS = (QUESTIONS + [f"Tell me about {w}." for w in ("rain", "snow", "bread", "soup", "robots", "cats")])[:23] + [
    f"Question {i}: {q}" for i, q in enumerate(QUESTIONS * 2)
][:27]
# The calls the built-in model was trained to make (scripts/make_tiny_model.py).
TRAINED_CALLS = {
    "What is the weather in Paris?": ("get_weather", {"city": "Paris"}),
    "How is the weather in Tokyo?": ("get_weather", {"city": "Tokyo"}),
    "What is the weather in Oslo?": ("get_weather", {"city": "Oslo"}),
    "What time is it in UTC?": ("get_time", {"timezone": "UTC"}),
    "What is the time in Asia/Tokyo?": ("get_time", {"timezone": "Asia/Tokyo"}),
}


def ask(
    question: str | list[Message],
    *,
    max_tokens: int = 120,
    tools: tuple[Tool, ...] = (),
    tool_choice: ToolChoice | None = None,
    response_format: ResponseFormat | None = None,
) -> InferenceRequest:
    messages = (Message("user", question),) if isinstance(question, str) else tuple(question)
    return InferenceRequest(
        model="tiny",
        messages=messages,
        params=SamplingParams(max_tokens=max_tokens),
        tools=tools,
        tool_choice=tool_choice,
        response_format=response_format,
    )


def run_all(
    runner: ModelRunner, requests: list[InferenceRequest], loop: asyncio.AbstractEventLoop | None = None
) -> list[list[Chunk]]:
    """The chunks of every request, run at once (on `loop`, for a runner bound to the loop that
    loaded it; else on a fresh one)."""

    async def go() -> list[list[Chunk]]:
        return list(await asyncio.gather(*(collect(runner, r) for r in requests)))

    return loop.run_until_complete(go()) if loop is not None else asyncio.run(go())


def check_call_stream(chunks: list[Chunk], request: InferenceRequest) -> ToolCall:
    """One tool call streamed as OpenAI streams it; returns it."""
    deltas = [d for c in chunks for d in c.tool_calls]
    assert deltas and deltas[0].id == f"call_{request.request_id[:12]}_0" and deltas[0].name
    assert deltas[0].arguments == ""
    assert all(d.index == 0 and d.id is None and d.name is None for d in deltas[1:])
    (choice,) = assemble_choices(chunks)
    assert choice.finish_reason == "tool_calls" and choice.text == ""
    (call,) = choice.tool_calls
    return call
