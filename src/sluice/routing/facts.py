"""What routing may look at for one request."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestFacts:
    """Facts extracted once per request, before routing.

    ``prompt_tokens`` is exact when a tokenizer is configured and estimated otherwise.
    ``block_hashes`` are chained hashes of the rendered prompt (see ``routing.hashing``), empty
    when the policy does not need them.
    """

    model: str
    prompt_tokens: int
    adapter: str | None = None
    block_hashes: Sequence[int] = field(default_factory=tuple)
    max_tokens: int | None = None
    session_key: str | None = None
    priority: int = 0
    tenant: str | None = None
    stream: bool = False
    request_id: str = ""
    # "interactive" or "batch": with the prompt size it selects the prompt class (``pools``).
    kind: str = "interactive"
    # A pinned model version (the ``x-sluice-model-version`` header), for testing a canary.
    version_override: str | None = None
    # UTF-8 bytes of the rendered prompt when tokens were estimated (0 when exact): with the
    # engine's reported prompt tokens it teaches the estimator its bytes-per-token rate.
    prompt_bytes: int = 0
