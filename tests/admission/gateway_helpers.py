"""A gateway with admission, governance and the admin API installed, for integration tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sluice.api.gateway import Gateway
from tests.api.helpers import gateway_config, running_gateway

EXTENSIONS = ("sluice.api.admin", "sluice.admission.gateway", "sluice.governance.gateway")
ADMIN = "admin-secret-for-tests"


def governed_config(urls: list[str], tmp_path: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "governance.database_url": f"sqlite:///{tmp_path / 'sluice.db'}",
        "governance.ledger.spill_dir": str(tmp_path / "spill"),
        "governance.ledger.flush_interval_s": 0.05,
        "admission.auth.admin_token": ADMIN,
        "admission.auth.key_cache_ttl_s": 0.0,
    }
    values.update(overrides)
    return gateway_config(urls, **values)


@contextlib.asynccontextmanager
async def governed_gateway(config: Any) -> AsyncIterator[tuple[str, Gateway]]:
    async with running_gateway(config, EXTENSIONS) as (url, gateway):
        yield url, gateway


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}
