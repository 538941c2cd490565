"""Tokenizers behind one small interface: a deterministic word-level one, or a real one.

``WordTokenizer`` needs no files. Text splits into words, numbers and single punctuation marks;
each piece gets a stable id. Ids decode to made-up words spelled in consonant-vowel syllables
(id 4711 → two syllables), and such a word encodes back to its id, so ``encode(decode(ids)) ==
ids`` for every id: a client that sends an answer back in the next turn of a chat reproduces the
engine's tokens and hits its prefix cache. Other words get ``blake2b(word) mod 128000``.

The special tokens and the chat template follow Llama 3 (ids 128000-128255, vocabulary 128256).
``HFTokenizer`` wraps a local ``tokenizer.json`` (``tokenizers`` library) behind the same methods.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Protocol

NUM_WORD_IDS = 128000
VOCAB_SIZE = 128256
SPECIAL_TOKENS: dict[str, int] = {
    "<|begin_of_text|>": 128000,
    "<|end_of_text|>": 128001,
    "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007,
    "<|eot_id|>": 128009,
}
BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|eot_id|>"

_CONSONANTS = "bdfghjklmnprstvz"
_VOWELS = "aeiou"
_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]  # 80 two-letter syllables
_SYLLABLE_INDEX = {s: i for i, s in enumerate(_SYLLABLES)}
_BASE = len(_SYLLABLES)


class Tokenizer(Protocol):
    """What the simulator and the workloads need from a tokenizer."""

    vocab_size: int
    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str: ...

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> str: ...

    def filler_token_ids(self) -> range:
        """Ids that decode to ordinary text: what simulated output is made of."""
        ...


def _message_text(content: Any) -> str:
    """OpenAI message content: a string, None, or a list of parts of which text parts count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content if isinstance(p, Mapping))


def render_llama3_chat(
    messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
) -> str:
    """Llama 3's chat template: every message in a header block, then the assistant header."""
    parts = [BOS_TOKEN]
    for message in messages:
        role = message.get("role", "user")
        text = _message_text(message.get("content"))
        parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{text}{EOS_TOKEN}")
    if add_generation_prompt:
        parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def word_for_id(token_id: int) -> str:
    """The canonical word of a word id: its base-80 digits spelled as syllables."""
    if not 0 <= token_id < NUM_WORD_IDS:
        raise ValueError(f"not a word id: {token_id}")
    digits: list[str] = []
    n = token_id
    while True:
        n, d = divmod(n, _BASE)
        digits.append(_SYLLABLES[d])
        if n == 0:
            return "".join(reversed(digits))


def _canonical_id(word: str) -> int | None:
    if len(word) % 2 or not word:
        return None
    n = 0
    for i in range(0, len(word), 2):
        d = _SYLLABLE_INDEX.get(word[i : i + 2])
        if d is None or (d == 0 and i == 0 and len(word) > 2):
            return None  # not syllables, or a leading zero digit (not the canonical spelling)
        n = n * _BASE + d
    return n if n < NUM_WORD_IDS else None


@lru_cache(maxsize=65536)
def _word_id(word: str) -> int:
    canonical = _canonical_id(word)
    if canonical is not None:
        return canonical
    digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % NUM_WORD_IDS


class WordTokenizer:
    """Deterministic, file-free, Llama-3-shaped tokenizer (see module docstring)."""

    vocab_size = VOCAB_SIZE
    eos_token_id: int | None = SPECIAL_TOKENS[EOS_TOKEN]
    bos_token_id = SPECIAL_TOKENS[BOS_TOKEN]

    def __init__(self) -> None:
        specials = "|".join(re.escape(s) for s in SPECIAL_TOKENS)
        self._pieces = re.compile(rf"{specials}|\w+|[^\w\s]")
        self._special_names = {v: k for k, v in SPECIAL_TOKENS.items()}

    def encode(self, text: str) -> list[int]:
        special = SPECIAL_TOKENS
        return [special.get(p) or _word_id(p) for p in self._pieces.findall(text)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        words: list[str] = []
        for token_id in ids:
            if token_id >= NUM_WORD_IDS:
                if not skip_special_tokens:
                    words.append(self._special_names.get(token_id, f"<|reserved_{token_id}|>"))
                continue
            words.append(word_for_id(token_id))
        return " ".join(words)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        return render_llama3_chat(messages, add_generation_prompt)

    def filler_token_ids(self) -> range:
        # Skip the one-syllable ids: real output is mostly longer words.
        return range(_BASE, NUM_WORD_IDS)


def text_of_length(num_tokens: int, seed: int | str = 0) -> str:
    """Text that ``WordTokenizer`` encodes to exactly ``num_tokens`` tokens, the same per seed."""
    rng = random.Random(f"text:{seed}")
    return " ".join(word_for_id(rng.randrange(_BASE, NUM_WORD_IDS)) for _ in range(num_tokens))


class HFTokenizer:
    """A real tokenizer from a local ``tokenizer.json`` (no hub access), Llama-3 chat template."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_token_id = next(
            (
                i
                for name in ("<|eot_id|>", "<|im_end|>", "</s>", "<|endoftext|>", "[SEP]")
                if (i := tokenizer.token_to_id(name)) is not None
            ),
            None,
        )
        added = getattr(tokenizer, "get_added_tokens_decoder", lambda: {})()
        special = {i for i, t in added.items() if getattr(t, "special", False)}
        self._filler = _longest_run_without(special, self.vocab_size)

    @classmethod
    def from_file(cls, path: str) -> HFTokenizer:
        from tokenizers import Tokenizer as _Tokenizer  # optional dependency

        return cls(_Tokenizer.from_file(path))

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        return render_llama3_chat(messages, add_generation_prompt)

    def filler_token_ids(self) -> range:
        return self._filler


def _longest_run_without(excluded: set[int], vocab_size: int) -> range:
    """The longest run of consecutive ids in ``[0, vocab_size)`` that avoids ``excluded``.

    Special tokens may sit at the start of the vocabulary (BERT-style) or at its end (Llama-3),
    so filler text must come from whichever plain stretch is longest, never from an empty one.
    """
    best = range(0)
    start = 0
    for stop in [*sorted(i for i in excluded if 0 <= i < vocab_size), vocab_size]:
        if stop - start > len(best):
            best = range(start, stop)
        start = stop + 1
    if not best:
        raise ValueError("the tokenizer has no ordinary (non-special) tokens to generate from")
    return best


def load_tokenizer(path: str | None = None) -> Tokenizer:
    """``WordTokenizer`` when no path is given, otherwise the ``tokenizer.json`` at ``path``."""
    return WordTokenizer() if path is None else HFTokenizer.from_file(path)
