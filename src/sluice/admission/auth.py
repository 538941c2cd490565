"""Authentication of the ``Authorization: Bearer`` credential: API key or (optionally) JWT.

Every failure (missing, malformed, unknown, wrong secret, expired, revoked) does the same work (a
cache or store lookup and one HMAC) and returns the same 401, so timing does not tell them apart.
Key records are cached briefly (``cache_ttl``, bounded LRU, also for unknown ids), and so are
verified credentials: the exact ``Authorization`` value of a key that passed its HMAC maps to its
``Principal`` until ``cache_ttl`` (or the key's expiry) passes, so a repeat caller costs one dict
lookup and one clock read. Only credentials that verified are kept there (a wrong secret never
is), so it cannot be filled by guessing. An entry in use is re-verified in the background in the
last fifth of its TTL (one task per credential: a fresh store lookup and one HMAC), so a steady
caller never waits at expiry, nor do its concurrent requests all miss at once. A revocation takes
effect within ``cache_ttl`` (an entry only lives ``cache_ttl`` past the store read that verified
it; at once in the process that revoked it, through ``forget``). While
the key store is unreachable, cached records keep serving for up to ``stale_ttl``; keys not in
the cache get 503, not 401.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable

import structlog

from sluice.admission import keys
from sluice.admission.jwt_auth import JwtError, JwtVerifier
from sluice.admission.key_store import KeyRecord, KeyStore
from sluice.admission.principal import AuthError, Principal

log = structlog.get_logger("sluice.admission.auth")

INVALID = "Incorrect API key provided."
MISSING = "You didn't provide an API key. Use 'Authorization: Bearer sk-sluice-…'."


def unauthorized(message: str = INVALID) -> AuthError:
    return AuthError(401, message, "invalid_api_key")


class Authenticator:
    def __init__(
        self,
        store: KeyStore,
        jwt_verifier: JwtVerifier | None = None,
        cache_ttl: float = 5.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        stale_ttl: float = 3600.0,
    ) -> None:
        self._store = store
        self._jwt = jwt_verifier
        self._ttl = cache_ttl
        self._size = cache_size
        self._clock = clock
        self._cache: OrderedDict[str, tuple[KeyRecord | None, float]] = OrderedDict()
        # Authorization header value -> (principal, valid until, re-verify from): verified keys
        # only.
        self._verified: dict[str, tuple[Principal, float, float]] = {}
        self._refreshing: set[str] = set()
        self._refresh_tasks: set[asyncio.Task[None]] = set()
        self._forgotten = 0  # bumped by ``forget``: a refresh begun before does not write back
        self._stale_ttl = stale_ttl
        self._store_down = False

    @staticmethod
    def bearer(authorization: str | None) -> str | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()

    def cached(self, authorization: str) -> Principal | None:
        """The principal of a credential verified within its TTL, or None (no await)."""
        hit = self._verified.get(authorization)
        if hit is None:
            return None
        now = self._clock()
        if now >= hit[1]:
            return None
        if now >= hit[2] and authorization not in self._refreshing:
            self._start_refresh(authorization)
        return hit[0]

    async def authenticate(self, authorization: str | None) -> Principal:
        if authorization is not None:
            hit = self.cached(authorization)
            if hit is not None:
                return hit
        token = self.bearer(authorization)
        if token is not None and self._jwt is not None and JwtVerifier.looks_like_jwt(token):
            try:
                return self._jwt.verify(token)
            except JwtError:
                raise unauthorized("Invalid or expired token.") from None
        parsed = keys.parse(token) if token else None
        record = await self._lookup(parsed[0]) if parsed else None
        secret = parsed[1] if parsed else "x" * 43
        if record is None:
            keys.verify(keys.DUMMY_SALT, keys.DUMMY_DIGEST, secret)
            raise unauthorized(MISSING if token is None else INVALID)
        good = keys.verify(record.salt, record.digest, secret)
        now = self._clock()
        if not good or not record.active(now):
            raise unauthorized()
        principal = _principal(record)
        if authorization is not None:
            self._remember(authorization, principal, record, now)
        return principal

    def _remember(
        self, authorization: str, principal: Principal, record: KeyRecord, now: float
    ) -> None:
        if self._ttl <= 0:
            return
        until = now + self._ttl
        refresh = now + self._ttl * _REFRESH_AT
        if record.expires_at is not None and record.expires_at < until:
            until = record.expires_at
            refresh = math.inf  # nothing to extend: the key itself expires first
        if authorization not in self._verified and len(self._verified) >= self._size:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[authorization] = (principal, until, refresh)

    def _start_refresh(self, authorization: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not in a loop: the entry expires and the next call verifies
        self._refreshing.add(authorization)
        task = loop.create_task(self._refresh(authorization))
        self._refresh_tasks.add(task)
        task.add_done_callback(self._refresh_tasks.discard)

    async def _refresh(self, authorization: str) -> None:
        """Re-verify a cached credential from a fresh store read; drop it if no longer valid.
        On a store error the entry is left to expire (then the outage rules apply)."""
        forgotten = self._forgotten
        try:
            token = self.bearer(authorization)
            parsed = keys.parse(token) if token else None
            if parsed is None:
                return
            key_id, secret = parsed
            try:
                record = await self._store.get(key_id)
            except Exception:
                return
            if forgotten != self._forgotten:
                return  # revoked meanwhile through this process: leave it dropped
            now = self._clock()
            self._cache[key_id] = (record, now)
            self._cache.move_to_end(key_id)
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
            if (
                record is None
                or not keys.verify(record.salt, record.digest, secret)
                or not record.active(now)
            ):
                self._verified.pop(authorization, None)
                return
            held = self._verified.get(authorization)
            if held is not None:
                principal = _principal(record)
                if principal == held[0]:
                    principal = held[0]  # the same object while nothing changed
                self._remember(authorization, principal, record, now)
        finally:
            self._refreshing.discard(authorization)

    async def _lookup(self, key_id: str) -> KeyRecord | None:
        now = self._clock()
        hit = self._cache.get(key_id)
        if hit is not None and now - hit[1] < self._ttl:
            return hit[0]
        try:
            record = await self._store.get(key_id)
        except Exception as exc:
            # The key store is unreachable: serve what we knew (bounded by stale_ttl), else 503.
            if hit is not None and now - hit[1] < self._stale_ttl:
                if not self._store_down:
                    self._store_down = True
                    log.warning(
                        "key store unreachable; using cached keys", error=type(exc).__name__
                    )
                return hit[0]
            raise AuthError(
                503, "Authentication is temporarily unavailable.", "auth_unavailable"
            ) from None
        if self._store_down:
            self._store_down = False
            log.warning("key store reachable again")
        self._cache[key_id] = (record, now)
        self._cache.move_to_end(key_id)
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return record

    def forget(self, key_id: str) -> None:
        """Drop a cached record (called after a revocation made through this process)."""
        self._forgotten += 1
        self._cache.pop(key_id, None)
        # Revocations are rare: a scan of the verified credentials is fine here.
        for value in [v for v, (p, _, _) in self._verified.items() if p.key_id == key_id]:
            del self._verified[value]


# A verified credential in use is re-verified in the background from this fraction of its TTL.
_REFRESH_AT = 0.8


def _principal(record: KeyRecord) -> Principal:
    return Principal(
        tenant=record.tenant,
        user=record.user,
        tier=record.tier,
        key_id=record.key_id,
        models=record.models,
        rpm=record.rpm,
        tpm=record.tpm,
        concurrency=record.concurrency,
        trusted=record.trusted,
    )
