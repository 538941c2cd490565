"""Extensions: how admission, governance and admin routes plug into a Gateway.

Each module named here, when it exists, exposes ``install(gateway: Gateway) -> None``; it may
append admit/settle hooks (``gateway.hooks``), routes (``gateway.routes``, mounted next to
/v1/models), and startup/shutdown coroutines (``gateway.on_startup`` / ``gateway.on_shutdown``),
and read its own section of ``gateway.config``. A module that is not there yet is skipped, as the
CLI does with subcommands, so the gateway runs with whatever parts are built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sluice.api.gateway import Gateway

EXTENSION_MODULES = (
    "sluice.api.admin",
    "sluice.admission.gateway",
    "sluice.governance.gateway",
)


def install_extensions(gateway: Gateway, modules: tuple[str, ...] = EXTENSION_MODULES) -> None:
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # that part is not built yet
            raise
        install = getattr(module, "install", None)
        if install is not None:
            install(gateway)
