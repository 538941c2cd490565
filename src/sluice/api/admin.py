"""The admin API: /admin/keys (create, list, revoke) and /admin/usage, behind the admin
credential (``admission.auth.admin_token`` or ``SLUICE_ADMIN_TOKEN``), never a user key.

Errors use the OpenAI shape: no or a wrong credential 401, a user key 403, bad input 400.
"""

from __future__ import annotations

import hmac
import os
import time
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sluice.admission import keys
from sluice.admission.auth import Authenticator
from sluice.admission.key_store import KeyStore
from sluice.api.errors import ApiError
from sluice.governance.db import Database, database_for
from sluice.governance.usage import GROUPS, UsageError, parse_groups, parse_time, to_csv, usage

if TYPE_CHECKING:
    from sluice.api.gateway import Gateway

log = structlog.get_logger("sluice.admin")
ADMIN_TOKEN_ENV = "SLUICE_ADMIN_TOKEN"


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(min_length=1, max_length=200)
    user: str = Field(min_length=1, max_length=200)
    tier: str = Field("free", min_length=1, max_length=32)
    name: str = Field("", max_length=200)
    models: list[str] = Field(default_factory=list)
    rpm: int | None = Field(None, gt=0)
    tpm: int | None = Field(None, gt=0)
    concurrency: int | None = Field(None, gt=0)
    trusted: bool = False
    expires_in_s: float | None = Field(None, gt=0)


def install(gateway: Gateway) -> None:
    cfg = gateway.config
    if not (cfg.admission.enabled or cfg.governance.ledger.enabled):
        return
    admin = AdminApi(gateway, database_for(gateway, cfg.governance.database_url))
    gateway.routes.extend(admin.routes())


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _error(err: ApiError) -> Response:
    headers = {k.decode(): v.decode() for k, v in err.headers}
    return Response(err.body(), err.status, headers=headers, media_type="application/json")


class AdminApi:
    def __init__(self, gateway: Gateway, db: Database) -> None:
        self.gw = gateway
        self.db = db
        self._token = gateway.config.admission.auth.admin_token or os.environ.get(ADMIN_TOKEN_ENV)

    def routes(self) -> list[Route]:
        return [
            Route("/admin/keys", self._guard(self.create_key), methods=["POST"]),
            Route("/admin/keys", self._guard(self.list_keys), methods=["GET"]),
            Route("/admin/keys/{key_id}", self._guard(self.revoke_key), methods=["DELETE"]),
            Route("/admin/keys/{key_id}/revoke", self._guard(self.revoke_key), methods=["POST"]),
            Route("/admin/usage", self._guard(self.usage), methods=["GET"]),
        ]

    def _guard(self, handler: Any) -> Any:
        async def guarded(request: Request) -> Response:
            try:
                await self._check(request.headers.get("authorization"))
                return await handler(request)
            except ApiError as err:
                return _error(err)

        return guarded

    async def _check(self, authorization: str | None) -> None:
        token = Authenticator.bearer(authorization)
        if token is None:
            raise ApiError(401, "This route needs the admin credential.", code="invalid_api_key")
        expected = self._token
        if expected and hmac.compare_digest(token.encode(), expected.encode()):
            return
        if keys.parse(token) is not None:
            raise ApiError(
                403, "API keys may not use the admin API.", code="admin_credential_required"
            )
        if not expected:
            raise ApiError(
                403,
                f"The admin API is disabled: set {ADMIN_TOKEN_ENV} or admission.auth.admin_token.",
                code="admin_disabled",
            )
        raise ApiError(401, "Incorrect admin credential.", code="invalid_api_key")

    async def create_key(self, request: Request) -> Response:
        try:
            raw = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise ApiError(400, "The body must be a JSON object.") from None
        if not isinstance(raw, dict):
            raise ApiError(400, "The body must be a JSON object.")
        try:
            spec = CreateKey.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise ApiError(400, f"{param}: {first['msg']}", param=param) from None
        now = time.time()
        record, plaintext = await KeyStore(self.db.engine).create(
            tenant=spec.tenant,
            user=spec.user,
            tier=spec.tier,
            name=spec.name,
            models=spec.models,
            rpm=spec.rpm,
            tpm=spec.tpm,
            concurrency=spec.concurrency,
            trusted=spec.trusted,
            expires_at=None if spec.expires_in_s is None else now + spec.expires_in_s,
            now=now,
        )
        log.info("admin_key_created", key_id=record.key_id, tenant=record.tenant, user=record.user)
        return _json({**record.public(), "key": plaintext}, status=201)

    async def list_keys(self, request: Request) -> Response:
        q = request.query_params
        include = q.get("include_revoked", "false").lower() in ("1", "true", "yes")
        records = await KeyStore(self.db.engine).list(q.get("tenant"), include_revoked=include)
        return _json({"object": "list", "data": [r.public() for r in records]})

    async def revoke_key(self, request: Request) -> Response:
        key_id = request.path_params["key_id"]
        if not await KeyStore(self.db.engine).revoke(key_id):
            raise ApiError(404, f"No active key {key_id!r}.", param="key_id")
        state = getattr(self.gw, "extensions_state", {}).get("admission")
        authenticator = getattr(getattr(state, "admission", None), "authenticator", None)
        if authenticator is not None:
            authenticator.forget(key_id)
        log.info("admin_key_revoked", key_id=key_id)
        return _json({"id": key_id, "revoked": True})

    async def usage(self, request: Request) -> Response:
        q = request.query_params
        try:
            groups = parse_groups(q.get("group_by", "tenant,model"))
            since, until = parse_time(q.get("since")), parse_time(q.get("until"))
        except UsageError as exc:
            param = "group_by" if "group" in str(exc) else "since"
            raise ApiError(400, f"{exc} (groups: {', '.join(GROUPS)})", param=param) from None
        rows = await usage(self.db.engine, groups, since, until, q.get("tenant"))
        if q.get("format", "json") == "csv":
            return Response(to_csv(rows, groups), media_type="text/csv")
        return _json({"object": "list", "group_by": groups, "data": rows})
