"""The server with a real subword tokenizer (``--tokenizer tokenizer.json``).

The tokenizer is a small byte-level BPE trained here with the ``tokenizers`` library: real subword
merges and spaces inside tokens, no download.
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from sluice.sim.server import IncrementalDetokenizer
from sluice.sim.tokenizer import HFTokenizer

from .conftest import StartServer

CORPUS = [
    "the river flows under the old stone bridge and into the quiet sea",
    "a café serves naïve tourists crème brûlée by the water — déjà vu",
    "streams of tokens arrive one by one, and each one carries a little text",
] * 20


@pytest.fixture
def tokenizer_json(tmp_path: Path) -> str:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.add_special_tokens(["<|eot_id|>"])  # after the vocabulary, as in Llama 3
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return str(path)


def test_incremental_deltas_concatenate_to_the_whole_text(tokenizer_json: str) -> None:
    tokenizer = HFTokenizer.from_file(tokenizer_json)
    ids = tokenizer.encode(" ".join(CORPUS[:3]))
    assert len(ids) > 20
    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces = [detokenizer.push([t], final=i == len(ids) - 1) for i, t in enumerate(ids)]
    assert "".join(pieces) == tokenizer.decode(ids) == " ".join(CORPUS[:3])
    assert not any("\ufffd" in p for p in pieces)  # split multi-byte characters were held back


async def test_server_streams_with_a_subword_tokenizer(
    sim_server: StartServer, tokenizer_json: str
) -> None:
    running = await sim_server(num_gpu_blocks=256, tokenizer_path=tokenizer_json)
    client = openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
    stream = await client.chat.completions.create(
        model=running.model,
        messages=[{"role": "user", "content": "the river flows"}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # The engine's output is a pure function of the request id: rebuild the token ids and check
    # that the deltas add up to exactly their decoded text (random byte-level tokens may decode
    # to U+FFFD; what matters is that no character is lost or doubled at chunk borders).
    planner = running.server.engine.planner
    plan = planner.plan(chunks[0].id, 16, 0, True)
    ids = [planner.token(plan.filler_base, i) for i in range(16)]
    assert text == running.server.tokenizer.decode(ids)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16
    prompt = HFTokenizer.from_file(tokenizer_json).encode(
        running.server.tokenizer.apply_chat_template(
            [{"role": "user", "content": "the river flows"}]
        )
    )
    assert chunks[-1].usage.prompt_tokens == len(prompt)
