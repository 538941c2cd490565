"""One audit row: what a request was, who asked, what answered, what it cost. PURE."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

# Request fields recorded as sampling parameters (values only, never the prompt).
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "stop",
    "logprobs",
    "top_logprobs",
    "response_format",
    "stream",
)


def prompt_hash(body: Mapping[str, Any]) -> str:
    """sha256 of the canonical prompt: the ``messages`` (chat) or ``prompt`` (completions),
    serialised as compact JSON with sorted keys."""
    payload = body.get("messages") if "messages" in body else body.get("prompt")
    canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in SAMPLING_FIELDS if k in body}


def prompt_text(body: Mapping[str, Any]) -> str:
    """Plain text of the prompt (for tenants that store text): messages joined by role."""
    if "messages" in body and isinstance(body["messages"], Sequence):
        parts = []
        for m in body["messages"]:
            if not isinstance(m, Mapping):
                continue
            content = m.get("content")
            if isinstance(content, list):
                content = " ".join(
                    str(c.get("text", "")) for c in content if isinstance(c, Mapping)
                )
            parts.append(f"{m.get('role', '?')}: {content}")
        return "\n".join(parts)
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode()


@dataclass(slots=True)
class AuditRecord:
    request_id: str
    ts: float
    status: int
    tenant: str | None = None
    user: str | None = None
    key_id: str | None = None
    model_requested: str | None = None
    model_served: str | None = None
    model_version: str | None = None
    weights_digest: str | None = None
    adapter: str | None = None
    endpoint: str | None = None
    routing_reason: str | None = None
    prompt_hash: str | None = None
    sampling: dict[str, Any] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    ttft_ms: float | None = None
    e2e_ms: float | None = None
    queue_ms: float | None = None
    finish_reason: str | None = None
    guardrails: dict[str, Any] | list[Any] | None = None
    cost_usd: float = 0.0
    prompt_text: str | None = None
    response_text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The columns as a dict (shallow: values are already plain JSON types)."""
        return {name: getattr(self, name) for name in _COLUMNS}


_COLUMNS = tuple(f.name for f in fields(AuditRecord) if f.name != "extra")
