"""Request body -> ``RequestFacts``: prompt tokens and prompt block hashes, once per request.

Exact when a tokenizer is given (a function ``text -> token ids``, e.g. a local
``tokenizer.json`` through ``tokenizers``) or when the caller passes the token ids it got from
the engine's ``/tokenize`` (``remote_tokens``; the I/O is the caller's, the cache is here):
tokens are cut at the engine's block size and hashed like the engine's prefix cache. Approximate
otherwise: the UTF-8 prompt is cut into fixed-size byte blocks, tokens estimated at 4 bytes each.

The prompt is the whole rendered conversation (``routing.templates``), including the template.
Tokenizations are cached (bounded by total tokens) so a retried or repeated prompt is free.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sluice.routing.facts import RequestFacts
from sluice.routing.hashing import (
    APPROX_BYTES_PER_TOKEN,
    DEFAULT_TEXT_BLOCK_BYTES,
    hash_text_blocks,
    hash_token_blocks,
)
from sluice.routing.lora import split_model_adapter
from sluice.routing.templates import TEMPLATES, Render

Tokenize = Callable[[str], Sequence[int]]
Header = Callable[[str], str | None]


@dataclass(frozen=True, slots=True)
class SessionKeySource:
    """Where a session key comes from, first found wins: header, then JWT claim, then ``user``."""

    header: str | None = "x-session-id"
    jwt_claim: str | None = None
    user_field: bool = True


class _TokenCache:
    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.tokens = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, Sequence[int]] = OrderedDict()

    def get(self, text: str, tokenize: Tokenize) -> Sequence[int]:
        ids = self.peek(text)
        if ids is None:
            ids = tokenize(text)
            self.put(text, ids)
        return ids

    def peek(self, text: str) -> Sequence[int] | None:
        ids = self._entries.get(text)
        if ids is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(text)
        return ids

    def put(self, text: str, ids: Sequence[int]) -> None:
        if text not in self._entries and len(ids) <= self.max_tokens:
            self._entries[text] = ids
            self.tokens += len(ids)
            while self.tokens > self.max_tokens:
                _, old = self._entries.popitem(last=False)
                self.tokens -= len(old)
        return ids


class FactsBuilder:
    def __init__(
        self,
        tokenize: Tokenize | None = None,
        *,
        template: str | Render = "llama3",
        block_size: int = 16,
        text_block_bytes: int = DEFAULT_TEXT_BLOCK_BYTES,
        session: SessionKeySource | None = None,
        adapter_separator: str = ":",
        kind_header: str = "x-sluice-kind",
        version_header: str = "x-sluice-model-version",
        cache_tokens: int = 4_000_000,
        remote_tokens: bool = False,
        bytes_per_token: float = APPROX_BYTES_PER_TOKEN,
        learn_bytes_per_token: bool = True,
    ) -> None:
        self.tokenize = tokenize
        # Token ids come from the engine's /tokenize, passed to ``build`` by the caller.
        self.remote_tokens = remote_tokens
        # Approximate mode's exchange rate: ~4 for English BPE; code and other scripts differ.
        if bytes_per_token <= 0:
            raise ValueError("bytes_per_token must be positive")
        self.bytes_per_token = bytes_per_token
        self.learn_bytes_per_token = learn_bytes_per_token
        self.render = TEMPLATES[template] if isinstance(template, str) else template
        self.block_size = block_size
        self.text_block_bytes = text_block_bytes
        self.session = session or SessionKeySource()
        self.adapter_separator = adapter_separator
        self.kind_header = kind_header
        self.version_header = version_header
        self.cache = _TokenCache(cache_tokens)

    @property
    def exact(self) -> bool:
        return self.tokenize is not None or self.remote_tokens

    @property
    def tokens_per_block(self) -> int:
        """What one hashed block stands for, for ``PrefixIndex(tokens_per_block=...)``."""
        if self.exact:
            return self.block_size
        return max(1, round(self.text_block_bytes / self.bytes_per_token))

    def observe(self, facts: RequestFacts, prompt_tokens: int) -> bool:
        """Learn the bytes-per-token rate from an engine-reported prompt token count (usage).

        Returns True when the block unit (``tokens_per_block``) changed, so the caller can move
        the index to it. Only estimated prompts teach; each sample is clamped to 1-16 bytes and
        weighs 5%, so one odd request cannot swing the rate.
        """
        if not self.learn_bytes_per_token or facts.prompt_bytes <= 0 or prompt_tokens <= 0:
            return False
        before = self.tokens_per_block
        sample = min(16.0, max(1.0, facts.prompt_bytes / prompt_tokens))
        self.bytes_per_token += 0.05 * (sample - self.bytes_per_token)
        return self.tokens_per_block != before

    def prompt(self, body: Mapping[str, Any]) -> str | list[int]:
        """The rendered prompt text, or token ids when the client sent ids."""
        messages = body.get("messages")
        if isinstance(messages, list):
            return self.render([m for m in messages if isinstance(m, Mapping)])
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list) and prompt:
            if all(isinstance(t, int) for t in prompt):
                return list(prompt)
            return "".join(p for p in prompt if isinstance(p, str))
        return ""

    def build(
        self,
        body: Mapping[str, Any],
        header: Header = lambda _name: None,
        *,
        claims: Mapping[str, Any] | None = None,
        request_id: str = "",
        priority: int = 0,
        tenant: str | None = None,
        token_ids: Sequence[int] | None = None,
    ) -> RequestFacts:
        """``token_ids``: the prompt's ids from the engine's /tokenize (remote tokens mode)."""
        raw_model = body.get("model")
        model, adapter = split_model_adapter(
            raw_model if isinstance(raw_model, str) else "", self.adapter_separator
        )
        field_adapter = body.get("adapter")
        if adapter is None and isinstance(field_adapter, str) and field_adapter:
            adapter = field_adapter
        prompt = self.prompt(body)
        tokens: Sequence[int] | None = None
        if isinstance(prompt, list):
            tokens = prompt
        elif token_ids is not None:
            tokens = token_ids
        elif self.tokenize is not None:
            tokens = self.cache.get(prompt, self.tokenize)
        hashes: Sequence[int]
        data_len = 0
        if tokens is not None:
            prompt_tokens = len(tokens)
            hashes = hash_token_blocks(tokens, self.block_size, extra_key=adapter)
        else:
            assert isinstance(prompt, str)
            data_len = len(prompt.encode("utf-8", "surrogatepass"))
            prompt_tokens = int(data_len / self.bytes_per_token)
            # Text blocks would never match an index of token blocks: when the engine could not
            # tokenize, route without cache information rather than with wrong keys.
            hashes = (
                ()
                if self.remote_tokens
                else hash_text_blocks(prompt, self.text_block_bytes, extra_key=adapter)
            )
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        kind = (header(self.kind_header) or "interactive").strip().lower()
        return RequestFacts(
            model=model,
            prompt_tokens=max(1, prompt_tokens),
            adapter=adapter,
            block_hashes=hashes,
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            session_key=self._session_key(body, header, claims),
            priority=priority,
            tenant=tenant,
            stream=bool(body.get("stream")),
            request_id=request_id,
            kind="batch" if kind == "batch" else "interactive",
            version_override=header(self.version_header),
            prompt_bytes=data_len,
        )

    def _session_key(
        self, body: Mapping[str, Any], header: Header, claims: Mapping[str, Any] | None
    ) -> str | None:
        source = self.session
        if source.header:
            value = header(source.header)
            if value:
                return value
        if source.jwt_claim and claims:
            claim = claims.get(source.jwt_claim)
            if claim is not None:
                return str(claim)
        if source.user_field:
            user = body.get("user")
            if isinstance(user, str) and user:
                return user
        return None
