"""``sluice usage``: usage and cost from the audit ledger, grouped, as a table, JSON or CSV."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import orjson
import typer

from sluice.admission.cli import ConfigOpt, DbOpt, database_url
from sluice.governance.db import make_engine, migrate_locked
from sluice.governance.usage import METRICS, UsageError, parse_groups, parse_time, to_csv, usage


async def _usage(
    url: str, groups: list[str], since: float | None, until: float | None, tenant: str | None
) -> list[dict[str, Any]]:
    engine = make_engine(url)
    try:
        await migrate_locked(engine, url)
        return await usage(engine, groups, since, until, tenant)
    finally:
        await engine.dispose()


def usage_command(
    group_by: Annotated[
        str, typer.Option(help="Comma-separated: tenant,user,key,model,day,hour")
    ] = "tenant,model",
    since: Annotated[
        str | None, typer.Option(help="Start: ISO time, epoch seconds, or 24h / 7d ago")
    ] = None,
    until: Annotated[str | None, typer.Option(help="End (exclusive), same formats")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant")] = None,
    csv: Annotated[bool, typer.Option("--csv", help="CSV on stdout")] = False,
    json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
    config: ConfigOpt = None,
    database: DbOpt = None,
) -> None:
    """Requests, tokens and cost per group over a time range."""
    try:
        groups = parse_groups(group_by)
        start, end = parse_time(since), parse_time(until)
    except UsageError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    url = database_url(config, database)
    rows = asyncio.run(_usage(url, groups, start, end, tenant))
    if csv:
        typer.echo(to_csv(rows, groups), nl=False)
        return
    if json:
        typer.echo(orjson.dumps(rows).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*groups, *METRICS)
    for row in rows:
        table.add_row(
            *(str(row[g]) for g in groups),
            *(f"{row[m]:,}" for m in METRICS[:-1]),
            f"{row['cost_usd']:.6f}",
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("usage")(usage_command)
