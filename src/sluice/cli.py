"""The ``sluice`` command line.

Each subcommand lives next to the code it drives (``sluice.sim.cli``, ``sluice.bench.cli``, ...)
and is imported lazily here: running one command imports only the module that registers it (so
``sluice serve`` does not load SQLAlchemy and Alembic for the admission CLI, ~30 MB of RSS),
while ``sluice --help`` and an unknown name import them all, so help lists every command. One
broken extra does not take the whole CLI down.
"""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])

# Modules exposing ``register(app: typer.Typer) -> None``, in help order.
_MODULES = (
    "sluice.sim.cli",
    "sluice.api.cli",
    "sluice.bench.cli",
    "sluice.admission.cli",
    "sluice.governance.cli",
)
# command name -> the module that registers it (tests/test_cli_lazy.py keeps this in step).
COMMANDS = {
    "sim": "sluice.sim.cli",
    "up": "sluice.api.cli",
    "serve": "sluice.api.cli",
    "bench": "sluice.bench.cli",
    "keys": "sluice.admission.cli",
    "usage": "sluice.governance.cli",
}


def _register(module_name: str, target: typer.Typer) -> None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return  # that part is not built yet
        raise
    module.register(target)


def _register_for(argv: list[str]) -> None:
    """Register the module of the command in ``argv``, or every module (help, unknown)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    module_name = COMMANDS.get(command) if command is not None else None
    for name in (module_name,) if module_name else _MODULES:
        _register(name, app)


@app.callback()
def _root() -> None:
    """Sluice: gateway, engine simulator and benchmarks for self-hosted LLM inference."""


def main() -> None:
    _register_for(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
