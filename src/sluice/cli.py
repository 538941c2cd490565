"""The ``sluice`` command line.

Each subcommand lives next to the code it drives (``sluice.sim.cli``, ``sluice.bench.cli``, ...)
and is imported lazily here, so ``sluice --help`` stays fast and one broken extra does not take
the whole CLI down.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])

# name -> module exposing ``register(app: typer.Typer) -> None``
_SUBCOMMANDS = {
    "sim": "sluice.sim.cli",
    "gateway": "sluice.api.cli",
    "bench": "sluice.bench.cli",
    "admission": "sluice.admission.cli",
    "governance": "sluice.governance.cli",
}


def _register_all() -> None:
    for module_name in _SUBCOMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # that part is not built yet
            raise
        module.register(app)


@app.callback()
def _root() -> None:
    """Sluice: gateway, engine simulator and benchmarks for self-hosted LLM inference."""


def main() -> None:
    _register_all()
    app()


if __name__ == "__main__":
    main()
