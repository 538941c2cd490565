"""Tokenizers: the deterministic word-level one, the chat template, and a real tokenizer.json."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from sluice.sim.engine import Engine, EngineConfig, SamplingParams, SimRequest
from sluice.sim.tokenizer import (
    NUM_WORD_IDS,
    SPECIAL_TOKENS,
    HFTokenizer,
    WordTokenizer,
    load_tokenizer,
    text_of_length,
    word_for_id,
)

TOK = WordTokenizer()
any_id = st.one_of(st.integers(0, NUM_WORD_IDS - 1), st.sampled_from(list(SPECIAL_TOKENS.values())))


@given(st.lists(any_id, max_size=300))
def test_encode_of_decode_is_identity(ids: list[int]) -> None:
    assert TOK.encode(TOK.decode(ids, skip_special_tokens=False)) == ids


@given(st.text(max_size=200))
def test_encode_is_deterministic_and_in_vocabulary(text: str) -> None:
    ids = TOK.encode(text)
    assert ids == WordTokenizer().encode(text)
    assert all(0 <= i < TOK.vocab_size for i in ids)


def test_words_split_on_spaces_and_punctuation() -> None:
    assert len(TOK.encode("Hello, world! How are you?")) == 8
    assert TOK.encode("hello") == TOK.encode("  hello\n")
    assert TOK.encode("hello") != TOK.encode("Hello")


def test_canonical_words_round_trip_and_other_words_hash() -> None:
    assert word_for_id(0) == "ba" and TOK.encode("ba") == [0]
    assert TOK.encode(word_for_id(4711)) == [4711]
    assert TOK.encode("baba") != [0]  # a leading zero syllable is not canonical: hashed


@given(st.integers(0, 3000), st.integers())
def test_text_of_length_is_exact_and_seeded(n: int, seed: int) -> None:
    text = text_of_length(n, seed)
    assert len(TOK.encode(text)) == n
    assert text == text_of_length(n, seed)


def test_chat_template_renders_every_message_llama3_style() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "first part"}]},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "last"},
    ]
    text = TOK.apply_chat_template(messages)
    header = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    assert text.startswith(header + "be brief")
    assert text.count("<|eot_id|>") == 4
    assert "first part" in text and "last" in text
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = TOK.encode(text)
    assert ids[0] == SPECIAL_TOKENS["<|begin_of_text|>"]
    # 1 BOS + per message (header start, role, header end, eot) + content words + gen prompt (3)
    assert len(ids) == 1 + 4 * 4 + (2 + 2 + 0 + 1) + 3
    assert not TOK.apply_chat_template(messages, add_generation_prompt=False).endswith("\n\n")


def test_decode_skips_special_tokens_by_default() -> None:
    ids = TOK.encode("<|start_header_id|>user<|end_header_id|> hi")
    assert "<|" not in TOK.decode(ids)
    assert TOK.decode(ids, skip_special_tokens=False).startswith("<|start_header_id|>")


def save_tiny_word_level(path: Path) -> None:
    """A 6-word WordLevel tokenizer built here, so the test needs no hub download."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "again": 3, "sun": 4, "<|eot_id|>": 5}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<|eot_id|>"])
    tokenizer.save(str(path))


def test_real_tokenizer_json_behind_the_same_interface(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    save_tiny_word_level(path)
    tok = load_tokenizer(str(path))
    assert isinstance(tok, HFTokenizer)
    assert tok.encode("hello world again") == [1, 2, 3]
    assert tok.decode([1, 2, 5]) == "hello world"
    assert tok.eos_token_id == 5
    assert tok.filler_token_ids() == range(0, 5)
    assert "<|eot_id|>" in tok.apply_chat_template([{"role": "user", "content": "hello"}])


def test_engine_generates_only_ids_the_real_tokenizer_knows(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    save_tiny_word_level(path)
    tok = HFTokenizer.from_file(str(path))
    engine = Engine(EngineConfig(num_gpu_blocks=64), tokenizer=tok)
    engine.add_request(SimRequest("r", tok.encode("hello world"), SamplingParams(max_tokens=500)))
    generated: list[int] = []
    while engine.has_unfinished():
        for out in engine.step().outputs:
            generated += out.new_token_ids
    assert generated and all(0 <= t < 5 for t in generated[:-1])
    assert generated[-1] == 5  # a natural stop ends with EOS


def test_special_tokens_first_in_the_vocabulary_leave_a_plain_filler_range(tmp_path: Path) -> None:
    """BERT-style vocabularies put special tokens at the lowest ids; filler must skip them."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|eot_id|>": 0, "[UNK]": 1, "hello": 2, "world": 3, "again": 4}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<|eot_id|>", "[UNK]"])
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    tok = HFTokenizer.from_file(str(path))
    assert tok.filler_token_ids() == range(2, 5)
    engine = Engine(EngineConfig(num_gpu_blocks=64), tokenizer=tok)
    engine.add_request(SimRequest("r", tok.encode("hello"), SamplingParams(max_tokens=20)))
    generated: list[int] = []
    while engine.has_unfinished():
        for out in engine.step().outputs:
            generated += out.new_token_ids
    assert generated and all(2 <= t < 5 for t in generated if t != tok.eos_token_id)
