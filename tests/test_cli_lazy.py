"""The root CLI registers subcommands lazily: one command imports only its own module."""

from __future__ import annotations

import importlib
import subprocess
import sys

import typer
from typer.main import get_command

from sluice import cli


def _names(module_name: str) -> set[str]:
    target = typer.Typer()

    @target.callback()
    def _root() -> None:
        """Group mode, as in the real CLI."""

    importlib.import_module(module_name).register(target)
    return set(get_command(target).commands)  # type: ignore[attr-defined]


def test_every_registered_command_maps_to_its_module() -> None:
    registered = {name: module for module in cli._MODULES for name in _names(module)}
    assert registered == cli.COMMANDS


def test_serve_imports_only_the_gateway_commands() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['sluice', 'serve', '--help']\n"
        "from sluice import cli\n"
        "try:\n"
        "    cli.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('sqlalchemy', 'alembic', 'sluice.admission.cli',\n"
        "    'sluice.bench.cli', 'sluice.sim.cli') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_help_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sluice.cli", "--help"], capture_output=True, text=True, check=True
    )
    for name in cli.COMMANDS:
        assert name in out.stdout, name
