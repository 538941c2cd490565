"""Render a whole conversation into the prompt text the engine sees.

Routing hashes the *rendered* conversation -- every message, in order, in the chat template --
not the first or last message (SGLang #26263): that is what the engine caches. Each template
appends one block per message, so the rendering of a conversation is a prefix of the rendering
of its continuation, and the next turn of a chat matches the previous one's blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

Render = Callable[[Sequence[Mapping[str, Any]]], str]


def message_text(message: Mapping[str, Any]) -> str:
    """Text of one message: string content, text parts, and tool calls (they are prompt too)."""
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = " ".join(
            p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)
        )
    else:
        text = ""
    tool_calls = message.get("tool_calls")
    if tool_calls:
        text += orjson.dumps(tool_calls, option=orjson.OPT_SORT_KEYS).decode()
    return text


def render_llama3(messages: Sequence[Mapping[str, Any]]) -> str:
    """Llama 3's chat template, with the generation prompt."""
    parts = ["<|begin_of_text|>"]
    for m in messages:
        role = m.get("role", "user")
        parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{message_text(m)}<|eot_id|>")
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def render_chatml(messages: Sequence[Mapping[str, Any]]) -> str:
    """ChatML (Qwen and others), with the generation prompt."""
    parts = [
        f"<|im_start|>{m.get('role', 'user')}\n{message_text(m)}<|im_end|>\n" for m in messages
    ]
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


TEMPLATES: dict[str, Render] = {"llama3": render_llama3, "chatml": render_chatml}
