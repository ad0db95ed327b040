#!/usr/bin/env python
"""Make atomr's built-in tiny Llama model, offline and reproducibly.

The script carries its own small English corpus. From it, it trains a byte-level BPE tokenizer
(HF `tokenizers`), then trains a tiny `LlamaForCausalLM` (hidden 128, 2 layers, 4 heads of 32,
context 256) for a few minutes on one CPU thread until greedy continuations of corpus lines
give back the corpus text and the question/answer lines answer in chat form. It also learns tool
calling in its chat template's format: with tools on offer (a system turn listing them as JSON),
weather and time questions get `<tool_call>{"name": "get_weather", "arguments": {"city": ...}}
</tool_call>` (or get_time), a tool result (a <|tool|> turn) gets an answer quoting it, and other
questions their plain answers. It writes:

    <out>/hf/        config.json, generation_config.json, model.safetensors, tokenizer files
    <out>/onnx/      the same model exported for ONNX Runtime GenAI (fp32, cpu)
    <out>/MANIFEST.json   sha256 and size of every file above

Re-running it gives byte-identical files (one thread, seed 0, deterministic algorithms, fixed
data order). The default output folder is the package's `atomr/models/tiny-llama`, which is
shipped so that using the model needs neither torch nor transformers; only this script does.

    python scripts/make_tiny_model.py [--out DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# One thread everywhere, before torch/tokenizers start their pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "atomr" / "models" / "tiny-llama"

VOCAB_SIZE = 640
CONTEXT_LENGTH = 256
DEFAULT_STEPS = 900
SEED = 0

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>")

# The chat template, in Jinja for transformers and ORT GenAI. Rendered:
#   <s>[<|system|>\nTools:\n{tool}\n...]<|system|>\n{system}\n<|user|>\n{user}\n<|assistant|>\n{answer}</s>\n
# and with add_generation_prompt it ends in "<|assistant|>\n". `tools` (OpenAI's list of
# {"type": "function", "function": {...}}, or the functions themselves) become a system turn listing
# each function as JSON, one a line; an assistant's tool calls follow its text as
# <tool_call>{"name": ..., "arguments": {...}}</tool_call> (arguments: the JSON text of the call);
# a tool result is a <|tool|> turn. `tool['function'] is defined` (not a conditional expression):
# ORT GenAI's template engine reads the tools the same way then as transformers' Jinja does.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}"
    "{{ '<|system|>\\nTools:\\n' }}"
    "{% for tool in tools %}"
    "{% if tool['function'] is defined %}{{ tool['function'] | tojson }}{% else %}{{ tool | tojson }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<|system|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' }}"
    "{% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{% if message['tool_calls'] is defined and message['tool_calls'] %}"
    "{% for call in message['tool_calls'] %}"
    "{{ '<tool_call>{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' }}"
    "{% if call['function']['arguments'] is string %}{{ call['function']['arguments'] }}"
    "{% else %}{{ call['function']['arguments'] | tojson }}{% endif %}"
    "{{ '}</tool_call>' }}"
    "{% endfor %}"
    "{% endif %}"
    "{{ eos_token + '\\n' }}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '<|tool|>\\n' + message['content'] + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|assistant|>\\n' }}"
    "{% endif %}"
)

# Our own prose. Each paragraph (lines joined by spaces) is one training document; the Q/A pairs
# below become "Q: ...\nA: ..." documents and chat turns.
CORPUS = """\
The actor model is a way to build programs from small pieces that share nothing. Each actor owns its
own state and talks to other actors only by sending messages. An actor that receives a message may
change its state, send messages to actors it knows, or create new actors.

Messages travel one way. A sender does not wait for an answer unless it asks for one, and the
receiver handles its messages one at a time, in the order they arrive. This makes an actor easy to
reason about, because no other code can touch its state while it works.

When an actor fails, its parent is told. The parent may restart the child, stop it, or pass the
failure up to its own parent. Good systems plan for failure from the start and keep the work that
was in flight, so that every request gets an answer.

A language model reads a prompt as a list of tokens and predicts the next token, again and again,
until it writes an end token or reaches the limit. Greedy decoding always takes the most likely
token, so the same prompt gives the same answer every time.

Sampling picks the next token at random from the model's probabilities. A low temperature makes the
choice careful and a high temperature makes it bold. Top p and top k keep only the most likely
tokens before the draw, and a seed makes the draw repeatable.

Inference servers batch many requests together, because one pass over the weights can serve many
prompts at once. Tokens stream back to each caller as soon as they are ready, and a caller that goes
away should stop its own generation.

The weather today is mild and grey. A light rain falls in the morning, the wind comes from the west,
and the clouds break up in the afternoon. Tomorrow will be sunny and warm, with a cool breeze near
the sea.

In winter the days are short and the nights are cold. Snow covers the hills, the rivers freeze at
the edges, and people stay near the fire with a warm cup of tea.

To make a simple soup, chop an onion, two carrots and a stick of celery. Cook them slowly in olive
oil until soft, add stock and a handful of lentils, and let the pot simmer for half an hour. Season
with salt and pepper and serve it hot with bread.

To bake bread, mix flour, water, salt and yeast into a soft dough. Knead it for ten minutes, let it
rise until it doubles, shape the loaf, and bake it in a hot oven until the crust is brown and the
bottom sounds hollow.

A small garden needs sun, water and patience. Plant beans in spring, keep the soil moist, and pick
them young, when they are tender and sweet.

The quick brown fox jumps over the lazy dog. The lazy dog sleeps in the sun and dreams of the fox.

Once upon a time a little robot lived in a quiet library. Every night it read one book and every
morning it told the cat what it had learned.
"""

QA_PAIRS = (
    ("What is an actor?", "An actor is a small program that owns its state and talks by messages."),
    ("How do actors talk?", "Actors talk only by sending messages."),
    ("What happens when an actor fails?", "Its parent is told and may restart it."),
    ("What is greedy decoding?", "Greedy decoding always takes the most likely token."),
    ("What does a seed do?", "A seed makes the random draw repeatable."),
    ("Why do servers batch requests?", "One pass over the weights can serve many prompts at once."),
    ("What is the weather today?", "The weather today is mild and grey."),
    ("What will the weather be tomorrow?", "Tomorrow will be sunny and warm."),
    ("How do I make soup?", "Chop an onion, two carrots and celery, cook them in oil, add stock and lentils."),
    ("How do I bake bread?", "Mix flour, water, salt and yeast, knead, let it rise and bake it."),
    ("What does a garden need?", "A small garden needs sun, water and patience."),
    ("What color is the fox?", "The fox is quick and brown."),
    ("Who lives in the library?", "A little robot lives in the library."),
    ("Hello!", "Hello! How can I help you today?"),
    ("Say hi.", "Hi there!"),
    ("What is two plus two?", "Two plus two is four."),
    ("Count to five.", "One, two, three, four, five."),
)

SYSTEM_PROMPT = "You are a helpful assistant."


# Tool calling: two functions, questions that call them, and the answers that quote their results.
TOOL_WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Get the weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TOOL_TIME: dict[str, Any] = {
    "name": "get_time",
    "description": "Get the time in a timezone.",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
}
# (city, what get_weather answers) and (timezone, what get_time answers)
WEATHER = (
    ("Paris", "sunny, 21 C"),
    ("London", "rainy, 12 C"),
    ("Tokyo", "cloudy, 18 C"),
    ("Berlin", "windy, 9 C"),
    ("Rome", "sunny, 25 C"),
    ("Oslo", "snowy, -3 C"),
)
TIMES = (
    ("UTC", "09:30"),
    ("Europe/Paris", "10:30"),
    ("Asia/Tokyo", "18:30"),
    ("America/New_York", "04:30"),
)
# With tools on offer, these questions still get their plain answers.
PLAIN_WITH_TOOLS = ("Hello!", "What is two plus two?", "What is an actor?", "Count to five.", "Say hi.")


def tool_call_text(name: str, arguments: dict[str, Any]) -> str:
    """An assistant's tool call as the template writes it (and the model learns to)."""
    return '<tool_call>{"name": "' + name + '", "arguments": ' + json.dumps(arguments) + "}</tool_call>"


def render_chat(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, *, end: bool = True) -> str:
    """CHAT_TEMPLATE rendered by hand for OpenAI-style messages (checked against transformers'
    Jinja in `check_template`). `end`: the last message is an assistant turn to train on, closed by
    EOS; otherwise the text ends with the generation prompt."""
    text = BOS
    if tools:
        text += "<|system|>\nTools:\n" + "".join(json.dumps(t.get("function", t)) + "\n" for t in tools)
    for i, m in enumerate(messages):
        role = m["role"]
        if role in ("system", "user"):
            text += f"<|{role}|>\n{m['content']}\n"
        elif role == "assistant":
            text += "<|assistant|>\n" + (m.get("content") or "")
            for call in m.get("tool_calls") or ():
                fn = call["function"]
                text += '<tool_call>{"name": "' + fn["name"] + '", "arguments": ' + fn["arguments"] + "}</tool_call>"
            text += EOS + ("" if end and i == len(messages) - 1 else "\n")
        elif role == "tool":
            text += f"<|tool|>\n{m['content']}\n"
    if not end:
        text += "<|assistant|>\n"
    return text


def call_message(k: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    call = {"id": f"call_{k}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def tool_conversations() -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """(messages, tools) of the tool-calling training chats; each ends in the assistant turn to learn."""
    both = [{"type": "function", "function": TOOL_WEATHER}, {"type": "function", "function": TOOL_TIME}]
    weather_only, time_only = both[:1], both[1:]
    out: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []
    for k, (city, report) in enumerate(WEATHER):
        call = call_message(k, "get_weather", {"city": city})
        for question in (f"What is the weather in {city}?", f"How is the weather in {city}?"):
            ask = [{"role": "user", "content": question}]
            out += [([*ask, call], both), ([*ask, call], weather_only)]
        result = {"role": "tool", "tool_call_id": f"call_{k}", "content": json.dumps({"city": city, "weather": report})}
        answer = {"role": "assistant", "content": f"The weather in {city} is {report}."}
        out.append(([{"role": "user", "content": f"What is the weather in {city}?"}, call, result, answer], both))
    for k, (zone, clock) in enumerate(TIMES, start=len(WEATHER)):
        call = call_message(k, "get_time", {"timezone": zone})
        for question in (f"What time is it in {zone}?", f"What is the time in {zone}?"):
            ask = [{"role": "user", "content": question}]
            out += [([*ask, call], both), ([*ask, call], time_only)]
        result = {"role": "tool", "tool_call_id": f"call_{k}", "content": json.dumps({"timezone": zone, "time": clock})}
        answer = {"role": "assistant", "content": f"It is {clock} in {zone}."}
        out.append(([{"role": "user", "content": f"What time is it in {zone}?"}, call, result, answer], both))
    answers = dict(QA_PAIRS)
    for question in PLAIN_WITH_TOOLS:
        chat = [{"role": "user", "content": question}, {"role": "assistant", "content": answers[question]}]
        out.append((chat, both))
    return out


def chat_text(user: str, answer: str | None = None, system: str | None = None) -> str:
    """The chat template rendered by hand (the same text the Jinja template gives)."""
    text = BOS
    if system is not None:
        text += f"<|system|>\n{system}\n"
    text += f"<|user|>\n{user}\n<|assistant|>\n"
    if answer is not None:
        text += answer + EOS
    return text


def paragraphs() -> list[str]:
    """The corpus paragraphs, each on one line."""
    return [" ".join(p.split()) for p in CORPUS.split("\n\n") if p.strip()]


def documents() -> list[str]:
    """Training documents in a fixed order: paragraphs, Q/A lines, chat turns."""
    docs = [BOS + p + EOS for p in paragraphs()]
    docs += [f"{BOS}Q: {q}\nA: {a}{EOS}" for q, a in QA_PAIRS]
    docs += [chat_text(q, a) for q, a in QA_PAIRS]
    docs += [chat_text(q, a, SYSTEM_PROMPT) for q, a in QA_PAIRS]
    docs += [render_chat(messages, tools) for messages, tools in tool_conversations()]
    return docs


def train_tokenizer(out_dir: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    special = [BOS, EOS, PAD, *ROLE_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Role tokens and BOS/EOS are special tokens: strip them from the text the merges learn from.
    lines = [*paragraphs(), *(f"Q: {q}\nA: {a}" for q, a in QA_PAIRS), SYSTEM_PROMPT]
    for messages, tools in tool_conversations():  # the tool turns' text, role tokens left out
        text = render_chat(messages, tools)
        for token in (BOS, EOS, *ROLE_TOKENS):
            text = text.replace(token, "\n")
        lines.append(text)
    tok.train_from_iterator(lines, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tok_path = out_dir / "tokenizer.json"
    tok.save(str(tok_path))

    special_map = {t: tok.token_to_id(t) for t in special}
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t, i in special_map.items()
    }
    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": list(ROLE_TOKENS),
        "bos_token": BOS,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "model_max_length": CONTEXT_LENGTH,
        "pad_token": PAD,
        "padding_side": "right",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    write_json(out_dir / "tokenizer_config.json", tokenizer_config)
    write_json(
        out_dir / "special_tokens_map.json",
        {
            "additional_special_tokens": list(ROLE_TOKENS),
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
        },
    )
    return tok


def check_template(hf_dir: Path) -> None:
    """Fail unless transformers' Jinja rendering of CHAT_TEMPLATE equals `render_chat` on every
    tool conversation, with the whole chat and with the generation prompt before its last turn."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    for messages, tools in tool_conversations():
        whole = tok.apply_chat_template(messages, tools=tools, tokenize=False)
        prompt = tok.apply_chat_template(messages[:-1], tools=tools, tokenize=False, add_generation_prompt=True)
        if whole != render_chat(messages, tools) + "\n" or prompt != render_chat(messages[:-1], tools, end=False):
            raise SystemExit(f"the chat template and render_chat disagree on {messages!r}:\n{whole!r}\n{prompt!r}")


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def train_model(hf_dir: Path, tok: Any, steps: int) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)

    vocab_size = tok.get_vocab_size()
    bos_id, eos_id, pad_id = (tok.token_to_id(t) for t in (BOS, EOS, PAD))
    # Passed as a dict: transformers 5 takes rope_theta/torch_dtype through **kwargs.
    config_args: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=32,
        max_position_embeddings=CONTEXT_LENGTH,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        attention_bias=False,
        mlp_bias=False,
        torch_dtype="float32",
        architectures=["LlamaForCausalLM"],
    )
    config = LlamaConfig(**config_args)
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config)
    model.train()

    # Documents already carry BOS/EOS as text; encode without adding another BOS.
    seqs = [tok.encode(d, add_special_tokens=False).ids for d in documents()]
    longest = max(len(s) for s in seqs)
    if longest > CONTEXT_LENGTH:
        raise SystemExit(f"a training document has {longest} tokens, over the context {CONTEXT_LENGTH}")
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    batch = 16
    n = len(seqs)
    started = time.perf_counter()
    loss_value = float("nan")
    for step in range(steps):
        # Fixed data order: a rotating window over the documents.
        idx = [(step * batch + j) % n for j in range(batch)]
        width = int(mask[idx].sum(dim=1).max())  # no columns of padding only
        out = model(input_ids=ids[idx, :width], attention_mask=mask[idx, :width], labels=labels[idx, :width])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_value = float(out.loss.detach())
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:4d} loss {loss_value:.4f} ({time.perf_counter() - started:.1f}s)", flush=True)

    model.eval()
    hf_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(hf_dir)
    # Top-level rope_theta for engines that do not read rope_parameters (mistral.rs).
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["rope_theta"] = 10000.0
    cfg.pop("_attn_implementation", None)
    write_json(hf_dir / "config.json", cfg)
    write_json(
        hf_dir / "generation_config.json",
        {
            "bos_token_id": bos_id,
            "do_sample": False,
            "eos_token_id": eos_id,
            "pad_token_id": pad_id,
        },
    )
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    (hf_dir / "model.safetensors").chmod(0o644)
    return {
        "final_loss": round(loss_value, 4),
        "steps": steps,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def export_onnx(hf_dir: Path, onnx_dir: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="atomr-ortb-") as tmp:
        build_out = Path(tmp) / "out"
        cmd = [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(hf_dir),
            "-o",
            str(build_out),
            "-p",
            "fp32",
            "-e",
            "cpu",
            "-c",
            str(Path(tmp) / "cache"),
        ]
        # The builder stamps model.onnx with `git rev-parse HEAD` run near its own files, which
        # names this repository's commit when the virtual environment lies inside it: no git.
        env = dict(os.environ, GIT_DIR=str(Path(tmp) / "no-git"), GIT_CEILING_DIRECTORIES=tmp)
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False, env=env)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"ORT GenAI export failed (exit {proc.returncode})")
        if onnx_dir.exists():
            shutil.rmtree(onnx_dir)
        onnx_dir.mkdir(parents=True)
        for f in sorted(build_out.iterdir()):
            if f.is_file():
                shutil.copy2(f, onnx_dir / f.name)
    # genai_config.json: one thread by default, the context length as max_length.
    gpath = onnx_dir / "genai_config.json"
    gcfg = json.loads(gpath.read_text())
    gcfg["search"]["max_length"] = CONTEXT_LENGTH
    session = gcfg["model"]["decoder"].setdefault("session_options", {})
    session["intra_op_num_threads"] = 1
    session["inter_op_num_threads"] = 1
    write_json(gpath, gcfg)
    # The builder saves the tokenizer with transformers; drop its local-load leftovers and keep the
    # chat template inline too (older ORT GenAI releases read it from tokenizer_config.json).
    tpath = onnx_dir / "tokenizer_config.json"
    tcfg = json.loads(tpath.read_text())
    for key in ("is_local", "local_files_only"):
        tcfg.pop(key, None)
    tcfg["chat_template"] = CHAT_TEMPLATE
    write_json(tpath, tcfg)


def write_manifest(out: Path, info: dict[str, Any]) -> dict[str, Any]:
    files = {}
    for f in sorted(p for p in out.rglob("*") if p.is_file() and p.name != "MANIFEST.json"):
        data = f.read_bytes()
        files[f.relative_to(out).as_posix()] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest = {"model": "tiny-llama", "made_by": "scripts/make_tiny_model.py", **info, "files": files}
    write_json(out / "MANIFEST.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"training steps (default {DEFAULT_STEPS})")
    ap.add_argument("--no-onnx", action="store_true", help="skip the ORT GenAI export")
    args = ap.parse_args(argv)

    out: Path = args.out.resolve()
    hf_dir, onnx_dir = out / "hf", out / "onnx"
    for d in (hf_dir, onnx_dir):
        if d.exists():
            shutil.rmtree(d)
    hf_dir.mkdir(parents=True)
    started = time.perf_counter()
    tok = train_tokenizer(hf_dir)
    check_template(hf_dir)
    info = train_model(hf_dir, tok, args.steps)
    if not args.no_onnx:
        export_onnx(hf_dir, onnx_dir)
    info["context_length"] = CONTEXT_LENGTH
    manifest = write_manifest(out, info)
    total = sum(f["bytes"] for f in manifest["files"].values())
    print(f"wrote {out} ({len(manifest['files'])} files, {total / 1e6:.2f} MB) in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
