"""API keys in SQL (same database as the audit ledger). Only salted digests are stored."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sluice.admission import keys

metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("tenant", sa.String(200), nullable=False),
    sa.Column("user", sa.String(200), nullable=False),
    sa.Column("tier", sa.String(32), nullable=False),
    sa.Column("models", sa.JSON, nullable=False),
    sa.Column("rpm", sa.Integer),
    sa.Column("tpm", sa.Integer),
    sa.Column("concurrency", sa.Integer),
    sa.Column("trusted", sa.Boolean, nullable=False),
    sa.Column("salt", sa.LargeBinary(32), nullable=False),
    sa.Column("digest", sa.LargeBinary(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float),
    sa.Column("revoked_at", sa.Float),
)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    tenant: str
    user: str
    tier: str = "free"
    name: str = ""
    models: tuple[str, ...] = ()  # empty: every model
    rpm: int | None = None  # None: the configured per-key default
    tpm: int | None = None
    concurrency: int | None = None
    trusted: bool = False  # may set the priority header
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    salt: bytes = b""
    digest: bytes = b""

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def public(self) -> dict[str, object]:
        """Everything but the salt and digest (for the admin API and the CLI)."""
        return {
            "id": self.key_id,
            "display": keys.display(self.key_id),
            "name": self.name,
            "tenant": self.tenant,
            "user": self.user,
            "tier": self.tier,
            "models": list(self.models),
            "rpm": self.rpm,
            "tpm": self.tpm,
            "concurrency": self.concurrency,
            "trusted": self.trusted,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


def _record(row: sa.Row) -> KeyRecord:
    m = row._mapping
    return KeyRecord(
        key_id=m["key_id"],
        tenant=m["tenant"],
        user=m["user"],
        tier=m["tier"],
        name=m["name"],
        models=tuple(m["models"] or ()),
        rpm=m["rpm"],
        tpm=m["tpm"],
        concurrency=m["concurrency"],
        trusted=bool(m["trusted"]),
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        revoked_at=m["revoked_at"],
        salt=bytes(m["salt"]),
        digest=bytes(m["digest"]),
    )


class KeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self,
        *,
        tenant: str,
        user: str,
        tier: str = "free",
        name: str = "",
        models: Sequence[str] = (),
        rpm: int | None = None,
        tpm: int | None = None,
        concurrency: int | None = None,
        trusted: bool = False,
        expires_at: float | None = None,
        now: float | None = None,
    ) -> tuple[KeyRecord, str]:
        """Create a key; returns the record and the plaintext (shown once, never stored)."""
        new = keys.generate()
        record = KeyRecord(
            key_id=new.key_id,
            tenant=tenant,
            user=user,
            tier=tier,
            name=name,
            models=tuple(models),
            rpm=rpm,
            tpm=tpm,
            concurrency=concurrency,
            trusted=trusted,
            created_at=time.time() if now is None else now,
            expires_at=expires_at,
            salt=new.salt,
            digest=new.digest,
        )
        values = {
            "key_id": record.key_id,
            "name": name,
            "tenant": tenant,
            "user": user,
            "tier": tier,
            "models": list(record.models),
            "rpm": rpm,
            "tpm": tpm,
            "concurrency": concurrency,
            "trusted": trusted,
            "salt": new.salt,
            "digest": new.digest,
            "created_at": record.created_at,
            "expires_at": expires_at,
            "revoked_at": None,
        }
        async with self._engine.begin() as conn:
            await conn.execute(api_keys.insert().values(**values))
        return record, new.plaintext

    async def get(self, key_id: str) -> KeyRecord | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id))
            ).first()
        return None if row is None else _record(row)

    async def list(
        self, tenant: str | None = None, include_revoked: bool = False
    ) -> list[KeyRecord]:
        query = sa.select(api_keys).order_by(api_keys.c.created_at)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(r) for r in rows]

    async def revoke(self, key_id: str, now: float | None = None) -> bool:
        """Mark a key revoked. False when it does not exist or was already revoked."""
        stmt = (
            api_keys.update()
            .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=time.time() if now is None else now)
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(stmt)
        return bool(result.rowcount)
