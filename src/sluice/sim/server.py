"""The simulator's vLLM-compatible HTTP server (Starlette).

Routes mirror vLLM's OpenAI server: completions and chat (streaming and not), models, health,
tokenize, metrics, LoRA load/unload, prefix-cache reset. Generation is handed to the
``EngineRunner``; the response objects below watch the ASGI ``http.disconnect`` message while
they wait for tokens, so a client that goes away aborts its request (and frees its KV blocks) as
soon as the server hears of it, not at the next write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

import sluice
from sluice.sim import openai_format as fmt
from sluice.sim.engine import Engine, EngineConfig
from sluice.sim.kv_events import KVEvent
from sluice.sim.kv_publisher import KVEventPublisher
from sluice.sim.lora import LoRAError, LoRARegistry
from sluice.sim.metrics import CONTENT_TYPE, EngineMetrics, LoRAState
from sluice.sim.request import RequestError, RequestOutput, SamplingParams, SimRequest
from sluice.sim.runner import EngineRunner, RequestHandle
from sluice.sim.tokenizer import Tokenizer, WordTokenizer, load_tokenizer

log = logging.getLogger("sluice.sim.server")


@dataclass(slots=True)
class ServerOptions:
    """Everything one simulated engine server needs (``sluice sim`` flags map onto these)."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    time_scale: float = 1.0
    max_loras: int = 4
    kv_events_endpoint: str | None = None  # e.g. "tcp://*:5557"; None disables KV events
    kv_events_topic: str = ""
    kv_events_map_format: bool = False
    kv_events_replay_endpoint: str | None = None  # a ROUTER for vLLM's replay protocol
    engine_index: int = 0
    tokenizer_path: str | None = None  # a tokenizer.json; None: the built-in word tokenizer


class SimServer:
    """One engine, its runner, metrics and LoRA registry; the object is the ASGI application."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self._pending_events: list[KVEvent] = []
        self.publisher: KVEventPublisher | None = None
        sink = self._pending_events.extend if options.kv_events_endpoint else None
        self.tokenizer: Tokenizer = load_tokenizer(options.tokenizer_path)
        # Word-level ids decode one by one, so each id's text is computed once (the vocabulary
        # bounds the cache); a real tokenizer decodes whole runs instead.
        self._pieces: dict[int, str] | None = (
            {} if isinstance(self.tokenizer, WordTokenizer) else None
        )
        self.engine = Engine(options.engine, kv_event_sink=sink, tokenizer=self.tokenizer)
        config = self.engine.config
        self.model_name: str = config.served_model_name or config.model
        self.max_model_len: int = config.max_model_len or 0
        self.loras = LoRARegistry(options.max_loras)
        self.created = int(time.time())
        self.metrics = EngineMetrics(
            lambda: self.engine.stats,
            model_name=self.model_name,
            max_model_len=self.max_model_len,
            cache_config=self._cache_config(),
            lora_state=self._lora_state,
            engine_index=options.engine_index,
        )
        self.runner = EngineRunner(
            self.engine,
            time_scale=options.time_scale,
            metrics=self.metrics,
            publish=self._publish,
            pending_events=self._pending_events,
        )
        self._starlette = Starlette(
            routes=self._routes(),
            lifespan=self._lifespan,
            exception_handlers={HTTPException: _http_exception},
        )
        self._generation_paths: dict[str, fmt.Kind] = {
            "/v1/chat/completions": "chat",
            "/v1/completions": "completion",
        }

    @property
    def app(self) -> SimServer:
        """The ASGI application (this object; see ``__call__``)."""
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point. Generation requests skip Starlette's routing and middleware,
        which would otherwise wrap every streamed chunk's ``send`` twice."""
        if scope["type"] == "http" and scope["method"] == "POST":
            kind = self._generation_paths.get(scope["path"])
            if kind is not None:
                try:
                    response = await self._generate(Request(scope, receive), kind)
                except Exception:
                    # A bug, not bad input: log it here, answer in the API's error shape.
                    log.exception("generation request failed")
                    response = _error(fmt.APIError(500, "Internal server error."))
                await response(scope, receive, send)
                return
        await self._starlette(scope, receive, send)

    # -- wiring -----------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/ping", self.health, methods=["GET", "POST"]),
            Route("/version", self.version, methods=["GET"]),
            Route("/load", self.load, methods=["GET"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/detokenize", self.detokenize, methods=["POST"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            Route("/v1/load_lora_adapter", self.load_lora, methods=["POST"]),
            Route("/v1/unload_lora_adapter", self.unload_lora, methods=["POST"]),
            Route("/reset_prefix_cache", self.reset_prefix_cache, methods=["POST"]),
            # SGLang's router asks for these first (new names, then the deprecated get_*).
            Route("/get_server_info", self.server_info, methods=["GET"]),
            Route("/server_info", self.server_info, methods=["GET"]),
            Route("/get_model_info", self.model_info, methods=["GET"]),
            Route("/model_info", self.model_info, methods=["GET"]),
        ]

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        if self.options.kv_events_endpoint:
            self.publisher = KVEventPublisher(
                self.options.kv_events_endpoint,
                topic=self.options.kv_events_topic,
                map_format=self.options.kv_events_map_format,
                data_parallel_rank=self.options.engine_index,
                replay_endpoint=self.options.kv_events_replay_endpoint,
            )
            self.publisher.start_replay()
        self.runner.start()
        try:
            yield
        finally:
            await self.runner.stop()
            if self.publisher is not None:
                await self.publisher.aclose()

    def _publish(self, events: list[KVEvent]) -> None:
        if self.publisher is not None:
            self.publisher.publish(events)

    def _cache_config(self) -> dict[str, Any]:
        config = self.engine.config
        return {
            "block_size": config.block_size,
            "cache_dtype": "auto",
            "enable_prefix_caching": config.enable_prefix_caching,
            "gpu_memory_utilization": config.gpu_memory_utilization,
            "num_cpu_blocks": None,
            "num_gpu_blocks": config.num_gpu_blocks,
            "prefix_caching_hash_algo": "blake2b_64",
        }

    def _lora_state(self) -> LoRAState:
        running, waiting = self.runner.lora_adapters()
        return LoRAState(self.options.max_loras, running, waiting)

    # -- generation -------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "completion")

    async def _generate(self, request: Request, kind: fmt.Kind) -> Response:
        try:
            if not self.runner.alive:
                raise fmt.APIError(503, "The engine is not running.")
            parsed = fmt.parse_generation_request(await request.body(), kind)
            model, lora_name = self._resolve_model(parsed.model)
            prompt_ids = self._prompt_token_ids(parsed)
            max_tokens = self._check_lengths(len(prompt_ids), parsed.max_tokens)
            request_id = fmt.new_request_id(kind)
            sim_request = SimRequest(
                request_id=request_id,
                prompt_token_ids=prompt_ids,
                sampling=SamplingParams(
                    max_tokens=max_tokens,
                    min_tokens=parsed.min_tokens,
                    ignore_eos=parsed.ignore_eos,
                    stop=parsed.stop,
                    seed=parsed.seed,
                ),
                lora_name=lora_name,
                priority=parsed.priority,
            )
            handle = self.runner.submit(sim_request)
        except fmt.APIError as exc:
            return _error(exc)
        except RequestError as exc:
            return _error(fmt.APIError(400, str(exc)))
        except ClientDisconnect:
            return Response(status_code=499)  # gone before its body arrived; nobody reads this
        return GenerationResponse(self, handle, parsed, model)

    def text_of(self, token_ids: list[int]) -> str:
        """Text of generated tokens (special tokens skipped), as ``tokenizer.decode`` gives."""
        pieces = self._pieces
        if pieces is None:
            return self.tokenizer.decode(token_ids)
        words = []
        for token_id in token_ids:
            word = pieces.get(token_id)
            if word is None:
                word = pieces[token_id] = self.tokenizer.decode([token_id])
            if word:
                words.append(word)
        return " ".join(words)

    def detokenizer(self) -> Detokenizer:
        """A per-stream detokenizer whose deltas concatenate to the non-streamed text."""
        if self._pieces is not None:
            return WordDetokenizer(self.text_of)
        return IncrementalDetokenizer(self.tokenizer)

    def _resolve_model(self, model: str | None) -> tuple[str, str | None]:
        if model is None or model == self.model_name:
            return self.model_name, None
        if model in self.loras:
            return model, model
        raise fmt.model_not_found(model)

    def _prompt_token_ids(self, parsed: fmt.GenerationRequest) -> list[int]:
        if parsed.messages is not None:
            return self.tokenizer.encode(self.tokenizer.apply_chat_template(parsed.messages))
        if parsed.prompt_token_ids is not None:
            return parsed.prompt_token_ids
        return self.tokenizer.encode(parsed.prompt_text or "")

    def _check_lengths(self, prompt_len: int, max_tokens: int | None) -> int:
        limit = self.max_model_len
        if max_tokens is None:
            if prompt_len >= limit:
                raise fmt.APIError(
                    400,
                    f"This model's maximum context length is {limit} tokens. However, your "
                    f"request has {prompt_len} input tokens. Please reduce the length of the "
                    "input messages.",
                )
            return limit - prompt_len
        if prompt_len + max_tokens > limit:
            raise fmt.APIError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the messages, {max_tokens} "
                "in the completion). Please reduce the length of the messages or completion.",
            )
        return max_tokens

    # -- everything else --------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        def entry(model_id: str, root: str, parent: str | None, created: int) -> dict[str, Any]:
            return {
                "id": model_id,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": root,
                "parent": parent,
                "max_model_len": self.max_model_len,
                "permission": [
                    {
                        "id": f"modelperm-{model_id}",
                        "object": "model_permission",
                        "created": created,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }

        data = [entry(self.model_name, self.engine.config.model, None, self.created)]
        for adapter in self.loras.adapters():
            data.append(entry(adapter.name, adapter.path, self.model_name, adapter.created))
        return _json({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        return Response(status_code=200 if self.runner.alive else 503)

    async def version(self, request: Request) -> Response:
        return _json({"version": f"sluice-sim-{sluice.__version__}"})

    async def load(self, request: Request) -> Response:
        return _json({"server_load": self.runner.in_flight()})

    async def tokenize(self, request: Request) -> Response:
        try:
            body = fmt.parse_json_object(await request.body())
            self._resolve_model(body.get("model"))
            if "messages" in body:
                messages = fmt.parse_generation_request(
                    orjson.dumps({"messages": body["messages"]}), "chat"
                ).messages
                add_prompt = body.get("add_generation_prompt", True)
                if not isinstance(add_prompt, bool):
                    raise fmt.APIError(400, "'add_generation_prompt' must be a boolean.")
                rendered = self.tokenizer.apply_chat_template(messages or [], add_prompt)
                tokens = self.tokenizer.encode(rendered)
            elif isinstance(body.get("prompt"), str):
                tokens = self.tokenizer.encode(body["prompt"])
            else:
                raise fmt.APIError(400, "Either 'prompt' (a string) or 'messages' is required.")
        except fmt.APIError as exc:
            return _error(exc)
        token_strs = None
        if body.get("return_token_strs"):
            token_strs = [self.tokenizer.decode([t]) for t in tokens]
        return _json(
            {
                "count": len(tokens),
                "max_model_len": self.max_model_len,
                "tokens": tokens,
                "token_strs": token_strs,
            }
        )

    async def detokenize(self, request: Request) -> Response:
        try:
            body = fmt.parse_json_object(await request.body())
            self._resolve_model(body.get("model"))
            tokens = body.get("tokens")
            if not isinstance(tokens, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens
            ):
                raise fmt.APIError(400, "'tokens' must be a list of token ids.", "tokens")
            vocab = self.tokenizer.vocab_size
            if any(t >= vocab for t in tokens):
                raise fmt.APIError(400, f"Token ids must be below {vocab}.", "tokens")
        except fmt.APIError as exc:
            return _error(exc)
        return _json({"prompt": self.tokenizer.decode(tokens)})

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def load_lora(self, request: Request) -> Response:
        try:
            body = fmt.parse_json_object(await request.body())
            name, path = body.get("lora_name"), body.get("lora_path")
            if not isinstance(name, str) or not isinstance(path, str):
                raise fmt.APIError(400, "Both 'lora_name' and 'lora_path' must be strings.")
            if name == self.model_name:
                raise fmt.APIError(400, f"'{name}' is the base model's name.", "lora_name")
            self.loras.load(name, path)
        except fmt.APIError as exc:
            return _error(exc)
        except LoRAError as exc:
            return _error(fmt.APIError(exc.status, exc.message, "lora_name"))
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_lora(self, request: Request) -> Response:
        try:
            body = fmt.parse_json_object(await request.body())
            name = body.get("lora_name")
            if not isinstance(name, str):
                raise fmt.APIError(400, "'lora_name' must be a string.", "lora_name")
            self.loras.unload(name)
        except fmt.APIError as exc:
            return _error(exc)
        except LoRAError as exc:
            return _error(fmt.APIError(exc.status, exc.message, "lora_name"))
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    async def reset_prefix_cache(self, request: Request) -> Response:
        done = self.engine.reset_prefix_cache()
        self.runner.publish_pending_events()
        if not done:
            return _error(
                fmt.APIError(409, "Cannot reset the prefix cache while requests are running.")
            )
        return Response(status_code=200)

    async def model_info(self, request: Request) -> Response:
        """SGLang's model-info shape, so routers that read it need no special case."""
        return _json(
            {
                "model_path": self.model_name,
                "tokenizer_path": self.options.tokenizer_path,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": "default",
                "max_model_len": self.max_model_len,
            }
        )

    async def server_info(self, request: Request) -> Response:
        config = self.engine.config
        return _json(
            {
                "engine": "sluice-sim",
                "version": sluice.__version__,
                "served_model_name": self.model_name,
                "model": config.model,
                "gpu": config.gpu,
                "tensor_parallel": config.tensor_parallel,
                "block_size": config.block_size,
                "num_gpu_blocks": config.num_gpu_blocks,
                "max_model_len": self.max_model_len,
                "max_num_seqs": config.max_num_seqs,
                "max_num_batched_tokens": config.max_num_batched_tokens,
                "enable_prefix_caching": config.enable_prefix_caching,
                "time_scale": self.options.time_scale,
                "max_loras": self.options.max_loras,
                "loras": [a.name for a in self.loras.adapters()],
                "kv_events_endpoint": self.publisher.bound_endpoint if self.publisher else None,
                "kv_events_replay_endpoint": (
                    self.publisher.bound_replay_endpoint if self.publisher else None
                ),
                "kv_events_topic": self.options.kv_events_topic,
                # Batches published so far (the next sequence number) and dropped at the HWM.
                "kv_events_batches": self.publisher.seq if self.publisher else 0,
                "kv_events_dropped_batches": (
                    self.publisher.dropped_batches if self.publisher else 0
                ),
                "data_parallel_rank": self.options.engine_index,
            }
        )


class Detokenizer(Protocol):
    def push(self, token_ids: list[int], final: bool) -> str:
        """The text the new tokens add to the stream."""
        ...


class WordDetokenizer:
    """Word-level ids decode independently; only the separating space needs care."""

    __slots__ = ("_started", "_text_of")

    def __init__(self, text_of: Callable[[list[int]], str]) -> None:
        self._text_of = text_of
        self._started = False

    def push(self, token_ids: list[int], final: bool) -> str:
        text = self._text_of(token_ids) if token_ids else ""
        if not text:
            return ""
        if self._started:
            return " " + text
        self._started = True
        return text


class IncrementalDetokenizer:
    """Subword tokenizers: decode the whole output and send what is new (vLLM's approach,
    without its prefix-offset optimisation: outputs here are short and this path is optional)."""

    __slots__ = ("_ids", "_text", "_tokenizer")

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._text = ""

    def push(self, token_ids: list[int], final: bool) -> str:
        self._ids.extend(token_ids)
        text = self._tokenizer.decode(self._ids)
        if text.endswith("\ufffd") and not final:
            return ""  # a multi-byte character is split across tokens: wait for the rest
        # Decoding more tokens may rewrite the tail of earlier text only in pathological
        # tokenizers; what was sent stays sent.
        delta = text[len(self._text) :]
        self._text = text
        return delta


class GenerationResponse(Response):
    """Streams (SSE) or collects one request's tokens while listening for the client leaving."""

    def __init__(
        self, server: SimServer, handle: RequestHandle, parsed: fmt.GenerationRequest, model: str
    ) -> None:
        self.server = server
        self.handle = handle
        self.parsed = parsed
        self.model = model
        self.status_code = 200
        self.background = None
        media = "text/event-stream" if parsed.stream else "application/json"
        self.init_headers({"content-type": media, "cache-control": "no-cache"})
        self._finished = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.create_task(self._watch_disconnect(receive))
        try:
            if self.parsed.stream:
                await self._stream(send)
            else:
                await self._collect(send)
        except OSError:
            pass  # the connection broke under a write: handled as a disconnect below
        finally:
            watcher.cancel()
            if not self._finished:
                self.server.runner.abort(self.handle.request_id)

    async def _watch_disconnect(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                # Free the request's blocks now; the waiting sender wakes on the None sentinel.
                self.server.runner.abort(self.handle.request_id)
                return

    async def _stream(self, send: Send) -> None:
        parsed, handle = self.parsed, self.handle
        encoder = fmt.ChunkEncoder(parsed.kind, handle.request_id, self.model)
        detokenizer = self.server.detokenizer()
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        if parsed.kind == "chat":
            await send({"type": "http.response.body", "body": encoder.role(), "more_body": True})
        generated = 0
        queue = self.handle.queue
        while True:
            out = await queue.get()
            # Everything already queued goes out in one write: under load a stream can be a
            # step or two behind, and one syscall per chunk is the server's main cost.
            body = b""
            while True:
                if out is None:
                    if self.server.runner.failure is not None:
                        body += encoder.error(500, "The engine failed.") + fmt.DONE
                        await send({"type": "http.response.body", "body": body})
                    return  # aborted: the client is gone
                generated += len(out.new_token_ids)
                text = detokenizer.push(out.new_token_ids, out.finished)
                usage = None
                if parsed.continuous_usage_stats:
                    usage = fmt.usage_dict(out.num_prompt_tokens, generated, out.num_cached_tokens)
                if out.finished:
                    break
                if text:
                    body += encoder.delta(text, usage)
                if queue.empty():
                    break
                out = queue.get_nowait()
            if out is None or not out.finished:
                if body:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                continue
            self._finished = True
            body += encoder.final(text, out.finish_reason or "stop", usage)
            if parsed.include_usage:
                total = fmt.usage_dict(out.num_prompt_tokens, generated, out.num_cached_tokens)
                body += encoder.usage(total, {"sim_timing": _timing(out)})
            await send({"type": "http.response.body", "body": body + fmt.DONE})
            return

    async def _collect(self, send: Send) -> None:
        pieces: list[int] = []
        while True:
            out = await self.handle.queue.get()
            if out is None:
                if self.server.runner.failure is not None:
                    await _send_whole(send, 500, fmt.error_body(500, "The engine failed."))
                return
            pieces.extend(out.new_token_ids)
            if out.finished:
                break
        self._finished = True
        usage = fmt.usage_dict(out.num_prompt_tokens, len(pieces), out.num_cached_tokens)
        body = fmt.completion_body(
            self.parsed.kind,
            self.handle.request_id,
            self.model,
            self.server.text_of(pieces),
            out.finish_reason or "stop",
            usage,
            {"sim_timing": _timing(out)},
        )
        headers = [*self.raw_headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _timing(out: RequestOutput) -> dict[str, float | None]:
    """Engine-side milestones in simulated seconds (a Sluice extension; clients ignore it)."""
    t = out.timing
    return {
        "arrival": t.arrival,
        "first_scheduled": t.first_scheduled,
        "first_token": t.first_token,
        "finished": t.finished,
    }


async def _send_whole(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _json(obj: Any) -> Response:
    return Response(orjson.dumps(obj), media_type="application/json")


def _error(exc: fmt.APIError) -> Response:
    return Response(exc.body(), status_code=exc.status, media_type="application/json")


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(fmt.APIError(exc.status_code, exc.detail))


__all__ = ["GenerationResponse", "ServerOptions", "SimServer"]
