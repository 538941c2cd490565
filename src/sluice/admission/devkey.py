"""A development key for ``sluice up``: created in the configured database, printed once."""

from __future__ import annotations

import asyncio

from sluice.admission.key_store import KeyStore
from sluice.governance.db import make_engine, migrate_locked


async def create_key_async(database_url: str, **spec: object) -> tuple[str, str]:
    """Create a key; returns ``(key_id, plaintext)``."""
    engine = make_engine(database_url)
    try:
        await migrate_locked(engine, database_url)
        record, plaintext = await KeyStore(engine).create(**spec)  # type: ignore[arg-type]
    finally:
        await engine.dispose()
    return record.key_id, plaintext


def create_dev_key(database_url: str) -> str:
    """A key for tenant ``dev`` / user ``dev`` on the ``pro`` tier, every model, default limits."""
    _, plaintext = asyncio.run(
        create_key_async(database_url, tenant="dev", user="dev", tier="pro", name="sluice up")
    )
    return plaintext
