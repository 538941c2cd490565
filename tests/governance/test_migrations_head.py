"""Starting on a current database skips Alembic; the pinned head matches Alembic's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.script import ScriptDirectory

from sluice.governance.db import alembic_config
from sluice.governance.migrations import HEAD_REVISION

_MIGRATE_AND_REPORT = """
import asyncio, sys
from sluice.governance.db import make_engine, migrate_locked, current_revision

async def main(url):
    engine = make_engine(url)
    await migrate_locked(engine, url)
    async with engine.connect() as conn:
        revision = await conn.run_sync(current_revision)
    await engine.dispose()
    print(revision, "alembic" in sys.modules)

asyncio.run(main(sys.argv[1]))
"""


def _migrate_in_fresh_process(url: str) -> tuple[str, bool]:
    out = subprocess.run(
        [sys.executable, "-c", _MIGRATE_AND_REPORT, url],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    return out[0], out[1] == "True"


def test_pinned_head_is_alembics_head() -> None:
    """Adding a migration without bumping HEAD_REVISION would leave databases unmigrated."""
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD_REVISION


def test_first_start_migrates_and_a_restart_does_not_import_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert _migrate_in_fresh_process(url) == (HEAD_REVISION, True)
    assert _migrate_in_fresh_process(url) == (HEAD_REVISION, False)
