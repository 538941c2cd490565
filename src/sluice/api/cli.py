"""``sluice up`` (embedded: simulated engines + gateway) and ``sluice serve`` (real engines)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from sluice.config import ConfigError, SluiceConfig, load_config


def up(
    port: Annotated[
        int | None, typer.Option(help="Gateway port (0: a free one) [default: 8080]")
    ] = None,
    engines: Annotated[int, typer.Option(min=1, help="Simulated engines to start")] = 4,
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on [default: 127.0.0.1]")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Optional YAML for everything else (routing, limits...)")
    ] = None,
    gpu: Annotated[str, typer.Option(help="Simulated GPU profile")] = "h100",
    model: Annotated[str, typer.Option(help="Simulated model profile")] = "llama-3.1-8b",
    quiet: Annotated[bool, typer.Option(help="No per-request log lines")] = False,
    auth: Annotated[
        bool,
        typer.Option(help="Require API keys (a development key is created and printed)"),
    ] = True,
) -> None:
    """Start simulated engines and the gateway in front of them; Ctrl-C stops everything."""
    from sluice.api.server import GatewayServer, settle_heap
    from sluice.sim.launch import start_engines
    from sluice.telemetry.logs import configure_logging

    # Unset options leave the config file and SLUICE_HOST/SLUICE_PORT in charge.
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["server.host"] = host
    if port is not None:
        overrides["server.port"] = port
    if quiet:
        overrides["logging.requests"] = False
    if not auth:
        overrides["admission.auth.enabled"] = False
    cfg = _load(config, overrides)
    configure_logging(cfg.logging.level)
    dev_key = None
    if cfg.admission.enabled and cfg.admission.auth.enabled:
        from sluice.admission.devkey import create_dev_key

        dev_key = create_dev_key(cfg.governance.database_url)
    typer.echo(f"starting {engines} simulated engine(s) ({model} on {gpu}) ...", err=True)
    with start_engines(engines, gpu=gpu, model=model) as fleet:
        cfg = cfg.model_copy(update={"endpoints": _endpoints(cfg, fleet.urls)}, deep=True)
        try:
            server = GatewayServer(cfg)
        except OSError as exc:
            where = f"{cfg.server.host}:{cfg.server.port}"
            _fail(f"cannot listen on {where}: {exc.strerror or exc}")
        server.gateway.on_startup.append(settle_heap)
        server.start()
        try:
            served = sorted(server.gateway.fleet.served_models()) or ["<model>"]
            typer.echo(_banner(server.url, served[0], fleet.urls, dev_key))
            _wait_for_stop()
        finally:
            typer.echo("stopping gateway and engines ...", err=True)
            server.stop()


def serve(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="sluice.yaml")] = None,
    endpoint: Annotated[
        list[str] | None,
        typer.Option("--endpoint", "-e", help="Engine URL (repeatable); adds to the config's"),
    ] = None,
    port: Annotated[int | None, typer.Option(help="Override server.port")] = None,
    host: Annotated[str | None, typer.Option(help="Override server.host")] = None,
) -> None:
    """Run the gateway in front of real engines (from the config file and/or --endpoint)."""
    import uvicorn

    from sluice.api.app import build_app
    from sluice.api.gateway import Gateway
    from sluice.api.server import bind, settle_heap, uvicorn_config
    from sluice.telemetry.logs import configure_logging

    overrides: dict[str, Any] = {}
    if port is not None:
        overrides["server.port"] = port
    if host is not None:
        overrides["server.host"] = host
    if endpoint:
        overrides["endpoints"] = [*_file_endpoints(config), *({"url": u} for u in endpoint)]
    cfg = _load(config, overrides)
    if not cfg.endpoints:
        _fail("no endpoints: list engine URLs under `endpoints:` in the config or use --endpoint")
    configure_logging(cfg.logging.level)
    try:
        gateway = Gateway(cfg)
    except ValueError as exc:
        _fail(f"{config or 'configuration'}: {exc}")
    gateway.on_startup.append(settle_heap)
    try:
        sock = bind(cfg.server.host, cfg.server.port)
    except OSError as exc:
        _fail(f"cannot listen on {cfg.server.host}:{cfg.server.port}: {exc.strerror or exc}")
    typer.echo(f"sluice gateway on http://{cfg.server.host}:{sock.getsockname()[1]}", err=True)
    uvicorn.Server(uvicorn_config(build_app(gateway), cfg)).run(sockets=[sock])


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("serve")(serve)


def _load(path: Path | None, overrides: dict[str, Any]) -> SluiceConfig:
    try:
        return load_config(path, overrides=overrides)
    except ConfigError as exc:
        _fail(str(exc))


def _file_endpoints(path: Path | None) -> list[Any]:
    """The config file's endpoints as plain data, so --endpoint adds to them."""
    if path is None:
        return []
    return [e.model_dump() for e in _load(path, {}).endpoints]


def _fail(message: str) -> Any:
    typer.echo(message, err=True)
    raise typer.Exit(2)


def _endpoints(cfg: SluiceConfig, urls: list[str]) -> list[Any]:
    from sluice.config import EndpointConfig

    return [*cfg.endpoints, *(EndpointConfig(url=u, id=f"sim{i}") for i, u in enumerate(urls))]


def _banner(url: str, model: str, engines: list[str], key: str | None = None) -> str:
    auth = f" -H 'Authorization: Bearer {key}'" if key else ""
    api_key = key or "unused"
    key_line = (
        f"Development key (tenant dev, user dev; shown once, `sluice keys` for more): {key}\n"
        if key
        else ""
    )
    return f"""
Sluice is up: {url}   ({len(engines)} simulated engines: {", ".join(engines)})
{key_line}
  curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  python - <<'PY'
  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="{api_key}")
  for chunk in client.chat.completions.create(
      model="{model}", messages=[{{"role": "user", "content": "Hello!"}}], stream=True
  ):
      print(chunk.choices[0].delta.content or "", end="", flush=True) if chunk.choices else None
  PY

Metrics: {url}/metrics   Ready: {url}/ready   Ctrl-C stops everything.
"""


def _wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM."""
    stop = threading.Event()

    def handler(signum: int, _: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        sys.stdout.flush()


def main() -> None:
    """``python -m sluice.api.cli serve ...``: the gateway commands alone, without importing the
    other subcommands (and their dependencies), for a leaner process."""
    app = typer.Typer(no_args_is_help=True, add_completion=False)
    register(app)
    app()


if __name__ == "__main__":
    main()
