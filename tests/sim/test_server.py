"""The simulator's HTTP server against the official ``openai`` client and raw HTTP.

Every test talks to a real uvicorn server (``sim_server`` fixture) that runs a real engine in real
time; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import orjson
import pytest

from sluice.sim.tokenizer import WordTokenizer, text_of_length

from .conftest import RunningServer, StartServer


def client_for(running: RunningServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0)


async def test_async_client_streams_chat_with_usage(sim_server: StartServer) -> None:
    running = await sim_server(num_gpu_blocks=512)
    client = client_for(running)
    stream = await client.chat.completions.create(
        model=running.model,
        messages=[{"role": "user", "content": "Tell me a story about a river."}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    choice_chunks = [c for c in chunks if c.choices]
    assert [c.choices[0].finish_reason for c in choice_chunks[:-1]] == [None] * (
        len(choice_chunks) - 1
    )
    assert choice_chunks[-1].choices[0].finish_reason == "length"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 12
    assert usage_chunk.usage.prompt_tokens_details.cached_tokens == 0
    prompt = await _tokenize_chat(running, "Tell me a story about a river.")
    assert usage_chunk.usage.prompt_tokens == prompt
    text = "".join(c.choices[0].delta.content or "" for c in choice_chunks)
    # The streamed pieces join into text that is exactly the generated tokens.
    assert len(WordTokenizer().encode(text)) == 12
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")


async def _tokenize_chat(running: RunningServer, content: str) -> int:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            running.url + "/tokenize",
            json={"model": running.model, "messages": [{"role": "user", "content": content}]},
        )
    assert response.status_code == 200
    body = response.json()
    assert body["max_model_len"] == running.server.max_model_len
    assert body["count"] == len(body["tokens"])
    return int(body["count"])


async def test_non_streaming_chat_and_completion_bodies(sim_server: StartServer) -> None:
    running = await sim_server(num_gpu_blocks=512)
    client = client_for(running)
    chat = await client.chat.completions.create(
        model=running.model,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        extra_body={"ignore_eos": True},
    )
    assert chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason == "length"
    assert len(WordTokenizer().encode(chat.choices[0].message.content or "")) == 5
    assert chat.usage is not None and chat.usage.prompt_tokens_details is not None
    assert chat.usage.prompt_tokens_details.cached_tokens == 0
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + 5

    completion = await client.completions.create(
        model=running.model, prompt="once upon a time", max_tokens=3
    )
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    assert completion.usage is not None and completion.usage.prompt_tokens == 4
    assert completion.usage.completion_tokens == len(completion.choices[0].text.split()) or (
        completion.choices[0].finish_reason == "stop"  # EOS decodes to no text
    )

    stream = await client.completions.create(
        model=running.model,
        prompt=[1000, 2000, 3000],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 3
    assert chunks[-2].choices[0].finish_reason == "length"
    assert all(c.object == "text_completion" for c in chunks)


async def test_repeated_prompt_is_served_from_the_prefix_cache(sim_server: StartServer) -> None:
    running = await sim_server(num_gpu_blocks=1024)
    client = client_for(running)
    messages = [{"role": "user", "content": text_of_length(300, seed="cache")}]
    first = await client.chat.completions.create(
        model=running.model, messages=messages, max_tokens=2
    )
    second = await client.chat.completions.create(
        model=running.model, messages=messages, max_tokens=2
    )
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    # Every full block but the one holding the last prompt token is reused.
    prompt = second.usage.prompt_tokens
    assert cached == (prompt - 1) // 16 * 16 and cached > 0
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(running.url + "/metrics")).text
    hits = _sample(metrics, "vllm:prefix_cache_hits_total")
    queries = _sample(metrics, "vllm:prefix_cache_queries_total")
    assert hits == cached
    assert queries == 2 * prompt


def _sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def _open_stream(
    running: RunningServer, payload: dict[str, object]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw HTTP/1.1 request, so the test decides exactly when the connection goes away."""
    host, port = running.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = orjson.dumps(payload)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    return reader, writer


async def _wait_for(condition, timeout: float = 2.0) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.002)
    return time.perf_counter() - start


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_aborts_and_frees_blocks(
    sim_server: StartServer, stream: bool
) -> None:
    running = await sim_server(num_gpu_blocks=1024)
    engine = running.server.engine
    payload = {
        "model": running.model,
        "messages": [{"role": "user", "content": text_of_length(100, seed="disconnect")}],
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": stream,
    }
    reader, writer = await _open_stream(running, payload)
    if stream:
        # Read until tokens flow: the request is running and holds blocks.
        received = b""
        while received.count(b"data: ") < 3:
            received += await reader.read(4096)
    else:
        await _wait_for(lambda: engine.stats.num_running == 1)
    assert engine.stats.kv_cache_usage > 0
    writer.close()
    elapsed = await _wait_for(lambda: engine.stats.num_running == 0)
    assert elapsed < 0.1
    assert engine.stats.kv_cache_usage == 0.0
    assert engine.stats.request_success_total["abort"] == 1
    assert running.server.runner.in_flight() == 0


async def _post(running: RunningServer, path: str, body: object) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    async with httpx.AsyncClient() as http:
        return await http.post(running.url + path, content=content)


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status
    assert error["type"] == {
        400: "BadRequestError",
        404: "NotFoundError",
        409: "ConflictError",
    }.get(status, error["type"])
    assert set(error) == {"message", "type", "param", "code"}
    return str(error["message"])


async def test_bad_requests_get_vllm_errors(sim_server: StartServer) -> None:
    running = await sim_server(num_gpu_blocks=128, max_model_len=1024)
    user = [{"role": "user", "content": "hi"}]
    message = _error(
        await _post(running, "/v1/chat/completions", {"model": "nope", "messages": user}), 404
    )
    assert message == "The model `nope` does not exist."
    long_prompt = [{"role": "user", "content": text_of_length(1100, seed=1)}]
    message = _error(
        await _post(
            running, "/v1/chat/completions", {"model": running.model, "messages": long_prompt}
        ),
        400,
    )
    assert "maximum context length is 1024 tokens" in message
    too_much = {"model": running.model, "messages": user, "max_tokens": 1020}
    assert "maximum context length" in _error(
        await _post(running, "/v1/chat/completions", too_much), 400
    )
    for bad in (0, -5):
        body = {"model": running.model, "messages": user, "max_tokens": bad}
        assert "max_tokens" in _error(await _post(running, "/v1/chat/completions", body), 400)
    assert "Invalid JSON" in _error(await _post(running, "/v1/chat/completions", b"{not json"), 400)
    assert "messages" in _error(
        await _post(running, "/v1/chat/completions", {"model": running.model}), 400
    )
    body = {"model": running.model, "messages": user, "stream_options": {"include_usage": True}}
    assert "stream=True" in _error(await _post(running, "/v1/chat/completions", body), 400)
    body = {"model": running.model, "messages": user, "n": 2}
    _error(await _post(running, "/v1/chat/completions", body), 400)
    _error(await _post(running, "/v1/completions", {"model": running.model, "prompt": ""}), 400)
    _error(await _post(running, "/v1/completions", {"model": running.model, "prompt": 7}), 400)
    async with httpx.AsyncClient() as http:
        _error(await http.get(running.url + "/v1/nothing-here"), 404)
    # Nothing was left running by any of them.
    assert running.server.runner.in_flight() == 0
    client = client_for(running)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=user)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=running.model, messages=user, max_tokens=0)  # type: ignore[arg-type]


async def test_lora_load_unload_and_max_loras(sim_server: StartServer) -> None:
    running = await sim_server(num_gpu_blocks=512, max_loras=2)
    load, unload = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"
    response = await _post(running, load, {"lora_name": "sql", "lora_path": "/adapters/sql"})
    assert response.status_code == 200 and "sql" in response.text
    assert "already been loaded" in _error(
        await _post(running, load, {"lora_name": "sql", "lora_path": "/adapters/sql"}), 400
    )
    assert (
        await _post(running, load, {"lora_name": "chat", "lora_path": "/a/c"})
    ).status_code == 200
    message = _error(await _post(running, load, {"lora_name": "third", "lora_path": "/a/t"}), 400)
    assert "max_loras=2" in message
    _error(await _post(running, load, {"lora_name": "x"}), 400)
    assert "cannot be found" in _error(await _post(running, unload, {"lora_name": "ghost"}), 400)

    async with httpx.AsyncClient() as http:
        models = (await http.get(running.url + "/v1/models")).json()
    assert models["object"] == "list"
    entries = {m["id"]: m for m in models["data"]}
    assert set(entries) == {running.model, "sql", "chat"}
    assert entries["sql"]["parent"] == running.model and entries["sql"]["root"] == "/adapters/sql"
    assert entries[running.model]["parent"] is None
    assert all(m["owned_by"] == "vllm" and m["object"] == "model" for m in models["data"])

    client = client_for(running)
    messages = [{"role": "user", "content": text_of_length(64, seed="lora")}]
    base = await client.chat.completions.create(
        model=running.model, messages=messages, max_tokens=1
    )  # type: ignore[arg-type]
    adapted = await client.chat.completions.create(model="sql", messages=messages, max_tokens=1)  # type: ignore[arg-type]
    assert adapted.model == "sql"
    # The adapter's blocks hash apart from the base model's: no cross-hit.
    assert base.usage and adapted.usage and adapted.usage.prompt_tokens_details.cached_tokens == 0

    assert (await _post(running, unload, {"lora_name": "sql"})).status_code == 200
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="sql", messages=messages, max_tokens=1)  # type: ignore[arg-type]
    assert (
        await _post(running, load, {"lora_name": "third", "lora_path": "/a/t"})
    ).status_code == 200


async def test_small_endpoints(sim_server: StartServer) -> None:
    running = await sim_server(num_gpu_blocks=256)
    async with httpx.AsyncClient(base_url=running.url) as http:
        health = await http.get("/health")
        assert health.status_code == 200 and health.content == b""
        assert (await http.get("/ping")).status_code == 200
        assert (await http.post("/ping")).status_code == 200
        assert "sluice" in (await http.get("/version")).json()["version"]
        assert (await http.get("/load")).json() == {"server_load": 0}
        info = (await http.get("/get_server_info")).json()
        assert info["block_size"] == 16 and info["num_gpu_blocks"] == 256
        assert info["served_model_name"] == running.model
        assert (await http.get("/server_info")).json() == info
        for path in ("/model_info", "/get_model_info"):
            model_info = (await http.get(path)).json()
            assert model_info["model_path"] == running.model
            assert model_info["is_generation"] is True
        tokens = (await http.post("/tokenize", json={"prompt": "the river flows"})).json()
        assert tokens["count"] == 3
        text = (await http.post("/detokenize", json={"tokens": [81, 82, 6401]})).json()
        assert (await http.post("/tokenize", json={"prompt": text["prompt"]})).json()["tokens"] == [
            81,
            82,
            6401,
        ]
        _error(await http.post("/detokenize", json={"tokens": "abc"}), 400)
        _error(await http.post("/detokenize", json={"tokens": [200_000]}), 400)
        _error(await http.post("/tokenize", json={"model": "nope", "prompt": "a"}), 404)
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        with_prompt = (await http.post("/tokenize", json=chat)).json()["count"]
        bare = {**chat, "add_generation_prompt": False}
        assert (await http.post("/tokenize", json=bare)).json()["count"] < with_prompt


async def test_reset_prefix_cache(sim_server: StartServer) -> None:
    running = await sim_server(num_gpu_blocks=512)
    client = client_for(running)
    messages = [{"role": "user", "content": text_of_length(80, seed="reset")}]
    await client.chat.completions.create(model=running.model, messages=messages, max_tokens=1)  # type: ignore[arg-type]
    assert running.server.engine.pool.cached
    async with httpx.AsyncClient(base_url=running.url) as http:
        assert (await http.post("/reset_prefix_cache")).status_code == 200
    assert not running.server.engine.pool.cached
    again = await client.chat.completions.create(
        model=running.model, messages=messages, max_tokens=1
    )  # type: ignore[arg-type]
    assert again.usage and again.usage.prompt_tokens_details.cached_tokens == 0


async def test_time_scale_dilates_wall_time_and_reports_simulated_time(
    sim_server: StartServer,
) -> None:
    running = await sim_server(num_gpu_blocks=512, time_scale=5.0)
    start = time.perf_counter()
    response = await _post(
        running,
        "/v1/completions",
        {"model": running.model, "prompt": "a b c", "max_tokens": 40, "ignore_eos": True},
    )
    wall = time.perf_counter() - start
    timing = response.json()["sim_timing"]
    assert timing["arrival"] <= timing["first_scheduled"] <= timing["first_token"]
    assert timing["first_token"] <= timing["finished"]
    simulated = timing["finished"] - timing["arrival"]
    # 40 decode steps of a few ms each, slowed five-fold on the wall clock.
    assert simulated > 0.1
    assert wall >= 4.0 * simulated


def test_text_of_generated_tokens_matches_the_tokenizer() -> None:
    from sluice.sim.engine import EngineConfig
    from sluice.sim.server import ServerOptions, SimServer

    server = SimServer(ServerOptions(engine=EngineConfig(num_gpu_blocks=64, max_model_len=512)))
    tokenizer = WordTokenizer()
    ids = [5, 81, 128009, 6401, 81, 127999, 128000]
    assert server.text_of(ids) == tokenizer.decode(ids)
    assert server.text_of(ids) == server.text_of(ids)  # from the cache the second time
    assert server.text_of([128009]) == ""


async def test_continuous_usage_stats_put_usage_in_every_chunk(sim_server: StartServer) -> None:
    running = await sim_server(num_gpu_blocks=256)
    client = client_for(running)
    stream = await client.completions.create(
        model=running.model,
        prompt="count with me",
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        extra_body={"ignore_eos": True},
    )
    chunks = [c async for c in stream]
    with_choices = [c for c in chunks if c.choices]
    assert [c.usage.completion_tokens for c in with_choices if c.usage] == [1, 2, 3, 4, 5]
    assert all(c.usage and c.usage.prompt_tokens == 3 for c in with_choices)
    assert chunks[-1].choices == [] and chunks[-1].usage and chunks[-1].usage.total_tokens == 8


async def test_engine_failure_ends_streams_with_an_error_and_fails_health(
    sim_server: StartServer,
) -> None:
    """The engine is replaced by a step that raises: a crash of the engine model cannot be
    provoked through its public API, and this is the only double in this file."""
    running = await sim_server(num_gpu_blocks=256)

    def broken_step() -> None:
        raise RuntimeError("simulated engine crash")

    running.server.engine.step = broken_step  # type: ignore[method-assign,assignment]
    body = {"model": running.model, "prompt": "hi", "max_tokens": 5, "stream": True}
    async with httpx.AsyncClient(base_url=running.url) as http:
        response = await http.post("/v1/completions", json=body)
        assert response.status_code == 200  # headers were sent before the crash
        events = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        error = orjson.loads(events[-2][6:])["error"]
        assert error["code"] == 500 and "engine" in error["message"]
        assert (await http.get("/health")).status_code == 503
        _error(await http.post("/v1/completions", json=body), 503)
