"""``sluice sim``: run one or more simulated vLLM engine servers.

``--count N`` starts N servers, each in its own process (so they spread over the cores), on
``--port``, ``--port + 1``, ...; with ``--kv-events-port P`` engine *i* publishes KV events on
``P + i``, as vLLM's data-parallel ranks do (and serves replay on ``--kv-events-replay-port``
``+ i`` when given). The listening sockets are bound by the parent before
the children start, so a busy port fails at once and ``--port 0`` picks free ports.

``python -m sluice.sim.cli`` runs the same command; the launcher (``launch.py``) uses it with the
hidden ``--fd`` option to hand a pre-bound socket to the child.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
from typing import Annotated

import typer

from sluice.sim.engine import EngineConfig
from sluice.sim.launch import bind_socket
from sluice.sim.server import ServerOptions

_READY_PREFIX = "sluice-sim engine listening on"


def serve(options: ServerOptions, sock: socket.socket, log_level: str = "warning") -> None:
    """Run one engine server on an already bound socket until SIGINT/SIGTERM."""
    import uvicorn

    from sluice.sim.server import SimServer

    server = SimServer(options)
    config = uvicorn.Config(
        server.app,
        log_level=log_level,
        access_log=False,
        proxy_headers=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    uvicorn.Server(config).run(sockets=[sock])


def _serve_child(options: ServerOptions, fd: int, log_level: str) -> None:
    serve(options, socket.socket(fileno=fd), log_level)


def sim(
    gpu: Annotated[
        str, typer.Option(help="GPU profile (h100, h200, a100-80gb, l40s, ...)")
    ] = "h100",
    model: Annotated[str, typer.Option(help="Model profile (llama-3.1-8b, ...)")] = "llama-3.1-8b",
    port: Annotated[int, typer.Option(help="Port of the first engine (0: free ports)")] = 8001,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    count: Annotated[int, typer.Option(min=1, help="Number of engine servers")] = 1,
    time_scale: Annotated[
        float, typer.Option(min=0.001, help="Wall seconds per simulated second")
    ] = 1.0,
    tensor_parallel: Annotated[int, typer.Option(min=1)] = 1,
    block_size: Annotated[int, typer.Option(min=1)] = 16,
    num_gpu_blocks: Annotated[int | None, typer.Option(help="Override the KV block count")] = None,
    max_num_seqs: Annotated[int | None, typer.Option()] = None,
    max_num_batched_tokens: Annotated[int | None, typer.Option()] = None,
    max_model_len: Annotated[int | None, typer.Option()] = None,
    max_loras: Annotated[int, typer.Option(min=0, help="LoRA adapters loadable at once")] = 4,
    served_model_name: Annotated[str | None, typer.Option()] = None,
    enable_prefix_caching: Annotated[bool, typer.Option()] = True,
    scheduling_policy: Annotated[str, typer.Option(help="fcfs or priority")] = "fcfs",
    seed: Annotated[int, typer.Option()] = 0,
    kv_events_port: Annotated[
        int | None, typer.Option(help="Publish KV events on ZMQ from this port (0: free)")
    ] = None,
    kv_events_replay_port: Annotated[
        int | None, typer.Option(help="Serve vLLM's KV-event replay (ROUTER) here (0: free)")
    ] = None,
    kv_events_topic: Annotated[str, typer.Option()] = "",
    kv_events_map_format: Annotated[
        bool, typer.Option(help="Newer vLLM map encoding instead of tagged arrays")
    ] = False,
    tokenizer: Annotated[str | None, typer.Option(help="A tokenizer.json to use")] = None,
    log_level: Annotated[str, typer.Option()] = "warning",
    fd: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Run simulated vLLM engines (OpenAI API, vLLM metrics, KV events)."""

    def options_for(index: int) -> ServerOptions:
        engine = EngineConfig(
            gpu=gpu,
            model=model,
            tensor_parallel=tensor_parallel,
            block_size=block_size,
            num_gpu_blocks=num_gpu_blocks,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            scheduling_policy=scheduling_policy,
            served_model_name=served_model_name,
            seed=seed,
            # Loading is capped at max_loras too, so the per-batch cap agrees with what is loaded.
            max_loras=max_loras or None,
        )
        kv_endpoint = replay_endpoint = None
        if kv_events_port is not None:
            kv_port = kv_events_port + index if kv_events_port else 0
            kv_endpoint = f"tcp://{host}:{kv_port}"
            if kv_events_replay_port is not None:
                replay_port = kv_events_replay_port + index if kv_events_replay_port else 0
                replay_endpoint = f"tcp://{host}:{replay_port}"
        return ServerOptions(
            engine=engine,
            time_scale=time_scale,
            max_loras=max_loras,
            kv_events_endpoint=kv_endpoint,
            kv_events_topic=kv_events_topic,
            kv_events_map_format=kv_events_map_format,
            kv_events_replay_endpoint=replay_endpoint,
            tokenizer_path=tokenizer,
        )

    try:
        options = [options_for(i) for i in range(count)]
        resolved = options[0].engine.resolved()  # validates profiles and sizes before binding
        if fd is not None:
            sockets = [socket.socket(fileno=fd)]
        else:
            sockets = [bind_socket(host, port + i if port else 0) for i in range(count)]
    except (ValueError, OSError) as exc:
        typer.echo(f"sluice sim: {exc}", err=True)
        raise typer.Exit(2) from exc

    for index, sock in enumerate(sockets):
        bound_host, bound_port = sock.getsockname()[:2]
        kv = options[index].kv_events_endpoint
        typer.echo(
            f"{_READY_PREFIX} http://{bound_host}:{bound_port} "
            f"(model {resolved.served_model_name}, {resolved.gpu} x{resolved.tensor_parallel}, "
            f"{resolved.num_gpu_blocks} KV blocks of {resolved.block_size}, "
            f"max_model_len {resolved.max_model_len}, time scale {time_scale}"
            + (f", KV events {kv}" if kv else "")
            + ")"
        )
    sys.stdout.flush()
    if len(sockets) == 1:
        serve(options[0], sockets[0], log_level)
        return
    _run_children(options, sockets, log_level)


def _run_children(
    options: list[ServerOptions], sockets: list[socket.socket], log_level: str
) -> None:
    # fork: the children inherit the bound sockets; nothing in this process runs a loop yet.
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_serve_child, args=(o, s.fileno(), log_level), daemon=False)
        for o, s in zip(options, sockets, strict=True)
    ]
    for child in children:
        child.start()
    for sock in sockets:
        sock.close()

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    try:
        for child in children:
            child.join()
    except KeyboardInterrupt:
        # The children got the same SIGINT from the terminal and shut down by themselves.
        for child in children:
            child.join(timeout=5)
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
                child.join(timeout=2)


def register(app: typer.Typer) -> None:
    app.command("sim")(sim)


def main() -> None:
    typer.run(sim)


if __name__ == "__main__":
    main()
