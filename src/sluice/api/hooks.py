"""Admission and settle hooks: how admission, limits and governance plug into the request path.

- ``admit`` hooks run in order after parsing, before routing. A hook rejects by raising
  ``ApiError`` (401, 403, 429, ...); it may set ``ctx.tenant``/``user``/``priority``, rewrite
  ``ctx.body`` (then set ``ctx.body_modified``), add ``ctx.response_headers``, or wait (a queue).
- ``settle`` hooks run exactly once per parsed request, on every outcome (success, engine error,
  upstream failure, rejection, client disconnect), after the response has been sent, with
  ``ctx.usage``, ``ctx.status``, ``ctx.outcome`` and timings filled. Exceptions are logged and
  swallowed: settling never changes what the client already received.

With no hooks configured (auth disabled) everyone is admitted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sluice.api.context import RequestContext

AdmitHook = Callable[[RequestContext], Awaitable[None]]
SettleHook = Callable[[RequestContext], Awaitable[None]]


@dataclass(slots=True)
class Hooks:
    admit: list[AdmitHook] = field(default_factory=list)
    settle: list[SettleHook] = field(default_factory=list)
