"""``sluice keys create|list|revoke``: API keys, straight against the configured database.

Gateways notice a revocation within ``admission.auth.key_cache_ttl_s`` (5 s by default).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from sluice.admission.key_store import KeyStore
from sluice.governance.db import make_engine, migrate_locked

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="sluice.yaml")]
DbOpt = Annotated[
    str | None, typer.Option("--database-url", help="Overrides governance.database_url")
]


def database_url(config: Path | None, url: str | None) -> str:
    if url:
        return url
    from sluice.config import ConfigError, load_config

    try:
        return load_config(config).governance.database_url
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


async def _with_store(url: str, action: Any) -> Any:
    engine = make_engine(url)
    try:
        await migrate_locked(engine, url)
        return await action(KeyStore(engine))
    finally:
        await engine.dispose()


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


keys_app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke.")


@keys_app.command("create")
def create(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to")],
    user: Annotated[str, typer.Option(help="User the key belongs to")],
    tier: Annotated[str, typer.Option(help="enterprise | pro | free (sets priority)")] = "free",
    name: Annotated[str, typer.Option(help="A label")] = "",
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Allowed model (repeatable; none: all)")
    ] = None,
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="Tokens per minute")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Concurrent requests")] = None,
    trusted: Annotated[bool, typer.Option(help="May set x-sluice-priority")] = False,
    expires_in: Annotated[
        float | None, typer.Option(min=0, help="Expiry, in hours from now")
    ] = None,
    config: ConfigOpt = None,
    database: DbOpt = None,
    json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Create a key. The key is printed once and never stored (only a salted hash is)."""
    url = database_url(config, database)
    expires_at = None if expires_in is None else time.time() + expires_in * 3600

    async def action(store: KeyStore) -> Any:
        return await store.create(
            tenant=tenant,
            user=user,
            tier=tier,
            name=name,
            models=model or [],
            rpm=rpm,
            tpm=tpm,
            concurrency=concurrency,
            trusted=trusted,
            expires_at=expires_at,
        )

    record, plaintext = asyncio.run(_with_store(url, action))
    if json:
        typer.echo(orjson.dumps({**record.public(), "key": plaintext}).decode())
        return
    typer.echo(f"created key {record.key_id} for {tenant}/{user} ({tier})")
    typer.echo(f"  {plaintext}")
    typer.echo("store it now: it cannot be shown again", err=True)


@keys_app.command("list")
def list_keys(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys")] = None,
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys")] = False,
    config: ConfigOpt = None,
    database: DbOpt = None,
    json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """List keys (ids and settings; never secrets)."""
    url = database_url(config, database)

    async def action(store: KeyStore) -> Any:
        return await store.list(tenant, include_revoked=all_keys)

    records = asyncio.run(_with_store(url, action))
    if json:
        typer.echo(orjson.dumps([r.public() for r in records]).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "id", "tenant", "user", "tier", "models", "rpm", "tpm", "conc", "expires", "revoked"
    )
    table.columns[0].no_wrap = True
    table.columns[0].min_width = 12
    for r in records:
        table.add_row(
            r.key_id,
            r.tenant,
            r.user,
            r.tier,
            ",".join(r.models) or "*",
            str(r.rpm or "-"),
            str(r.tpm or "-"),
            str(r.concurrency or "-"),
            _when(r.expires_at),
            _when(r.revoked_at),
        )
    Console().print(table)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (the 12 hex characters)")],
    config: ConfigOpt = None,
    database: DbOpt = None,
) -> None:
    """Revoke a key."""
    url = database_url(config, database)

    async def action(store: KeyStore) -> bool:
        return await store.revoke(key_id)

    if not asyncio.run(_with_store(url, action)):
        typer.echo(f"no active key {key_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
