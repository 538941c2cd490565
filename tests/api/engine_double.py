"""A controllable engine test double, for failure injection the real simulator cannot do.

``sluice sim`` is used wherever behaviour is normal (see test_openai_client.py); this aiohttp
server exists because the gateway's failure paths need an engine that fails *on demand*: refuses
with 503, dies in the middle of a stream, stays silent, or reports itself unhealthy. It speaks the
same wire format as vLLM (SSE chunks, a usage chunk when asked, Prometheus metric names).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

MODEL = "double-model"


@dataclass
class EngineDouble:
    name: str = "double"
    # "ok" | "status" (answer with ``status``) | "die_mid_stream" | "die_before_first_byte"
    # | "hang" (accept, then never send a byte) | "stall_mid_stream" (one chunk, then silence)
    mode: str = "ok"
    status: int = 503
    error_body: bytes = b""
    healthy: bool = True
    chunks: int = 3
    chunk_delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnects: int = 0
    running: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> EngineDouble:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._generate)
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503)

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def _metrics(self, _: web.Request) -> web.Response:
        text = (
            f'vllm:num_requests_running{{engine="0",model_name="{MODEL}"}} {self.running}.0\n'
            f'vllm:num_requests_waiting{{engine="0",model_name="{MODEL}"}} 2.0\n'
            f'vllm:kv_cache_usage_perc{{engine="0",model_name="{MODEL}"}} 0.25\n'
            'vllm:cache_config_info{block_size="32",engine="0",num_gpu_blocks="4096"} 1.0\n'
            'vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql",'
            'waiting_lora_adapters="chat"} 1.7e9\n'
        )
        return web.Response(text=text)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if self.mode == "status":
            payload = self.error_body or orjson.dumps(
                {"error": {"message": "engine says no", "type": "X", "param": None, "code": 1}}
            )
            return web.Response(status=self.status, body=payload, content_type="application/json")
        if self.mode == "hang":
            self.running += 1
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.disconnects += 1
                raise
            finally:
                self.running -= 1
        if self.mode == "die_before_first_byte":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        chat = request.path.endswith("chat/completions")
        usage = {
            "prompt_tokens": 7,
            "completion_tokens": self.chunks,
            "total_tokens": 7 + self.chunks,
        }
        if not body.get("stream"):
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": "x" * self.chunks}}
                if chat
                else {"index": 0, "text": "x" * self.chunks}
            )
            choice["finish_reason"] = "length"
            return web.json_response(
                {
                    "id": "cmpl-1",
                    "object": "chat.completion" if chat else "text_completion",
                    "created": 1,
                    "model": MODEL,
                    "choices": [choice],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for i in range(self.chunks):
                if self.mode == "die_mid_stream" and i == 1:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                if self.mode == "stall_mid_stream" and i == 1:
                    await asyncio.sleep(3600)
                delta = {"delta": {"content": "x"}} if chat else {"text": "x"}
                chunk = {
                    "id": "cmpl-1",
                    "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": 1,
                    "model": MODEL,
                    "choices": [{"index": 0, **delta, "finish_reason": None}],
                }
                await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
            options = body.get("stream_options") or {}
            if options.get("include_usage"):
                final = {
                    "id": "cmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": MODEL,
                    "choices": [],
                    "usage": usage,
                }
                await response.write(b"data: " + orjson.dumps(final) + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects += 1
            raise
        await response.write_eof()
        return response
