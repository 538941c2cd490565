"""Write the canned upstream answers nginx serves: one chat completion, one 32-event SSE stream.

Run by run.sh; the bodies are realistic vLLM shapes (ids, usage, the usage-only last chunk that
the gateway asks for and removes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODEL = "bench-model"


def chat_body() -> str:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "word " * 30},
                    "finish_reason": "length",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
        },
        separators=(",", ":"),
    )


def sse_body() -> str:
    events = []
    for i in range(30):
        delta = {"role": "assistant", "content": ""} if i == 0 else {"content": "word "}
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        events.append(json.dumps(chunk, separators=(",", ":")))
    usage = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": 29, "total_tokens": 41},
    }
    events.append(json.dumps(usage, separators=(",", ":")))
    events.append("[DONE]")
    return "".join(f"data: {e}\n\n" for e in events)  # 32 events


def models_body() -> str:
    return json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "chat.json").write_text(chat_body())
    (out / "chat.sse").write_text(sse_body())
    (out / "models.json").write_text(models_body())
