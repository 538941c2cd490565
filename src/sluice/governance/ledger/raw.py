"""Compact journal rows: what the gateway knows at settle, and the audit row computed from it. PURE.

The gateway's settle hook journals one JSON array per request (``RAW_TAG`` first) holding only
what it has at hand: ids, times, tokens, status, the routing decision's parts, the prompt hash and
the sampling parameters. Everything that can be computed later is computed by whoever inserts
the row (the writer process, or the inline writer's task): the served model, its version and
weights digest, the routing explanation, the cost, millisecond times and the finish reason of a
request that ended without one. The registry those lookups need is journaled too, once at the
top of each segment (``header``), so a segment replayed by another process, or after a restart
with a changed registry, still gets the version, digest and prices that were current when the
request was served.

The prompt hash stays in the gateway on purpose: journaling the request body instead would put
every tenant's prompt text on local disk (spill files can outlive a database outage), which the
ledger otherwise does only for tenants in ``store_text_tenants``, and redacted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from sluice.governance.ledger.record import _COLUMNS as RECORD_COLUMNS
from sluice.governance.ledger.record import SAMPLING_FIELDS
from sluice.governance.ledger.schema import COLUMNS
from sluice.governance.prices import Prices, cost

RAW_TAG = 2  # a compact row: a JSON array whose first element is this
HEADER_KEY = "ledger_header"
HEADER_PREFIX = b'{"' + HEADER_KEY.encode() + b'"'
SAMPLING_KEYS = frozenset(SAMPLING_FIELDS)

# Positions in a compact row (after the tag).
(
    _TAG,
    REQUEST_ID,
    TS,
    STATUS,
    TENANT,
    USER,
    KEY_ID,
    MODEL,
    UPSTREAM_MODEL,
    ADAPTER,
    ENDPOINT,
    ROUTE,
    ERROR,
    PROMPT_HASH,
    SAMPLING,
    PROMPT_TOKENS,
    COMPLETION_TOKENS,
    CACHED_TOKENS,
    TTFT_S,
    E2E_S,
    QUEUE_S,
    FINISH_REASON,
    OUTCOME,
    GUARDRAILS,
    PROMPT_TEXT,
    RESPONSE_TEXT,
) = range(26)
FIELDS = 26

# One served model as the writer needs it: version, weights digest, prices.
ModelFacts = tuple[str, str, Prices]
Models = dict[str, ModelFacts]


def header(entries: Iterable[Any]) -> bytes:
    """The segment header line for these registry entries (``ModelEntry``-like objects)."""
    registry = {
        e.name: [e.version, e.weights_digest, e.prices.model_dump(exclude_none=True)]
        for e in entries
    }
    return orjson.dumps({HEADER_KEY: 1, "registry": registry}, option=orjson.OPT_APPEND_NEWLINE)


def models_from_header(obj: Mapping[str, Any]) -> Models:
    out: Models = {}
    for name, (version, digest, prices) in (obj.get("registry") or {}).items():
        out[name] = (version, digest, Prices(**prices))
    return out


def explain(route: list[Any] | tuple[Any, ...], upstream_model: str | None) -> str:
    """``Decision.explain()`` of the journaled decision parts: the same text, built without a
    ``Decision`` (tested against it). A non-finite score (JSON has none; no shipped policy
    produces one) reads ``nan``."""
    endpoint, reason, scores, pool, cached, load_adapter = route
    out = f"{endpoint}; {reason}"
    if scores:
        out += "; " + ", ".join(
            [f"{k}={math.nan if v is None else v:.3g}" for k, v in scores.items()]
        )
    if pool is not None:
        out += f"; pool={pool}"
    if upstream_model is not None:
        out += f"; model={upstream_model}"
    if cached:
        out += f"; cached={cached}"
    if load_adapter is not None:
        out += f"; load_adapter={load_adapter}"
    return out


def _finish(outcome: str | None) -> str | None:
    if outcome == "cancelled":
        return "cancelled"
    if outcome in ("rejected", "upstream_error"):
        return "error"
    return None


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def values(raw: list[Any], models: Models, encode_json: bool = False) -> tuple[Any, ...]:
    """The audit row of one compact row, in the table's column order (``schema.COLUMNS``);
    with ``encode_json`` the JSON columns as text (what the insert binds)."""
    model = raw[MODEL]
    upstream = raw[UPSTREAM_MODEL]
    served = upstream or model
    facts = models.get(served) or models.get(model)
    endpoint = raw[ENDPOINT]
    route = raw[ROUTE]
    prompt_tokens, completion_tokens, cached = (
        raw[PROMPT_TOKENS],
        raw[COMPLETION_TOKENS],
        raw[CACHED_TOKENS],
    )
    # Journaled in the request's key order; recorded in SAMPLING_FIELDS order.
    given = raw[SAMPLING]
    sampling = {k: given[k] for k in SAMPLING_FIELDS if k in given} if given else None
    guardrails = raw[GUARDRAILS]
    if encode_json:
        sampling, guardrails = _json(sampling), _json(guardrails)
    ttft, e2e, queue = raw[TTFT_S], raw[E2E_S], raw[QUEUE_S]
    return (
        raw[REQUEST_ID],
        raw[TS],
        raw[TENANT],
        raw[USER],
        raw[KEY_ID],
        model,
        served if endpoint is not None else None,
        facts[0] if facts else None,
        facts[1] if facts else None,
        raw[ADAPTER],
        endpoint,
        explain(route, upstream) if route is not None else raw[ERROR],
        raw[PROMPT_HASH],
        sampling,
        prompt_tokens,
        completion_tokens,
        cached,
        None if ttft is None else ttft * 1000,
        None if e2e is None else e2e * 1000,
        None if queue is None else queue * 1000,
        raw[STATUS],
        raw[FINISH_REASON] or _finish(raw[OUTCOME]),
        guardrails,
        cost(facts[2] if facts else None, prompt_tokens, completion_tokens, cached),
        raw[PROMPT_TEXT],
        raw[RESPONSE_TEXT],
    )


def expand(raw: list[Any], models: Models) -> dict[str, Any]:
    """The audit row of one compact row as a dict (the columns of ``AuditRecord``, in order)."""
    row = dict(zip(COLUMNS, values(raw, models), strict=True))
    return {c: row[c] for c in RECORD_COLUMNS}


def row_params(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the insert binds for a whole audit row (a dict)."""
    out = [row.get(c) for c in COLUMNS]
    for i in _JSON_INDEXES:
        if out[i] is not None:
            out[i] = orjson.dumps(out[i]).decode()
    return tuple(out)


_JSON_INDEXES = tuple(i for i, c in enumerate(COLUMNS) if c in ("sampling", "guardrails"))
