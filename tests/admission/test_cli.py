"""``sluice keys`` and ``sluice usage`` against a real SQLite database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import typer
from typer.testing import CliRunner

from sluice.admission import cli as keys_cli
from sluice.admission.auth import Authenticator
from sluice.admission.key_store import KeyStore
from sluice.admission.principal import AuthError
from sluice.governance import cli as usage_cli
from sluice.governance.db import make_engine
from sluice.governance.ledger import AuditRecord, AuditWriter


def _app() -> typer.Typer:
    app = typer.Typer()
    keys_cli.register(app)
    usage_cli.register(app)
    return app


async def _authenticate(url: str, key: str) -> str:
    engine = make_engine(url)
    try:
        return (
            await Authenticator(KeyStore(engine), cache_ttl=0).authenticate(f"Bearer {key}")
        ).user
    finally:
        await engine.dispose()


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    runner = CliRunner()
    app = _app()
    made = runner.invoke(
        app,
        [
            "keys",
            "create",
            "--tenant",
            "acme",
            "--user",
            "al",
            "--tier",
            "pro",
            "--model",
            "m",
            "--rpm",
            "7",
            "--database-url",
            url,
            "--json",
        ],
    )
    assert made.exit_code == 0, made.output
    created = orjson.loads(made.stdout)
    assert created["key"].startswith("sk-sluice-") and created["rpm"] == 7
    assert asyncio.run(_authenticate(url, created["key"])) == "al"

    listed = runner.invoke(app, ["keys", "list", "--database-url", url, "--json"])
    rows = orjson.loads(listed.stdout)
    assert [r["id"] for r in rows] == [created["id"]] and created["key"] not in listed.stdout

    assert (
        runner.invoke(app, ["keys", "revoke", created["id"], "--database-url", url]).exit_code == 0
    )
    again = runner.invoke(app, ["keys", "revoke", created["id"], "--database-url", url])
    assert again.exit_code == 1
    try:
        asyncio.run(_authenticate(url, created["key"]))
        raise AssertionError("revoked key still works")
    except AuthError as err:
        assert err.status == 401


async def _fill(url: str) -> None:
    engine = make_engine(url)
    from sluice.governance.db import migrate

    await migrate(engine)
    writer = AuditWriter(engine, Path(url.split("///")[1]).parent / "spill")
    await writer.start()
    for i in range(5):
        writer.submit(
            AuditRecord(
                request_id=f"r{i}",
                ts=1_700_000_000 + i,
                status=200,
                tenant="acme",
                model_served="m",
                prompt_tokens=10,
                completion_tokens=2,
                cost_usd=0.5,
            )
        )
    await writer.close()
    await engine.dispose()


def test_usage_csv_and_bad_group(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'u.db'}"
    asyncio.run(_fill(url))
    runner = CliRunner()
    out = runner.invoke(
        _app(), ["usage", "--group-by", "tenant,model", "--csv", "--database-url", url]
    )
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines() == [
        "tenant,model,requests,prompt_tokens,completion_tokens,cached_tokens,cost_usd",
        "acme,m,5,50,10,0,2.500000",
    ]
    bad = runner.invoke(_app(), ["usage", "--group-by", "colour", "--database-url", url])
    assert bad.exit_code == 2
