"""Optional JWT bearer tokens: keys from a JWKS file or URL, claims mapped to tenant/user/tier."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jwt
from pydantic import BaseModel

from sluice.admission.principal import Principal

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]


class JwtConfig(BaseModel):
    enabled: bool = False
    jwks_file: str | None = None
    jwks_url: str | None = None
    issuer: str | None = None
    audience: str | None = None
    tenant_claim: str = "tenant"
    user_claim: str = "sub"
    tier_claim: str = "tier"
    models_claim: str | None = None
    trusted_claim: str | None = None
    default_tier: str = "free"
    refresh_s: float = 300.0


class JwtError(Exception):
    pass


class JwtVerifier:
    """Verifies signatures against a JWKS; caches verified tokens until they expire (bounded)."""

    def __init__(
        self,
        config: JwtConfig,
        jwks: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
    ) -> None:
        self.config = config
        self._clock = clock
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._cache_size = cache_size
        self._keys: dict[str, Any] = {}
        self._loaded_at = 0.0
        if jwks is not None:
            self.load(jwks)
        elif config.jwks_file:
            self.load(json.loads(Path(config.jwks_file).read_text()))

    def load(self, jwks: Mapping[str, Any]) -> None:
        keyset = jwt.PyJWKSet.from_dict(dict(jwks))
        self._keys = {k.key_id or "": k for k in keyset.keys}
        self._loaded_at = self._clock()

    async def refresh_from_url(self) -> None:
        """Fetch the JWKS from ``jwks_url`` (called at startup and every ``refresh_s``)."""
        import aiohttp

        if not self.config.jwks_url:
            return
        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(self.config.jwks_url) as resp,
        ):
            resp.raise_for_status()
            self.load(await resp.json(content_type=None))

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        return token.count(".") == 2 and token.startswith("ey")

    def verify(self, token: str) -> Principal:
        now = self._clock()
        hit = self._cache.get(token)
        if hit is not None and now < hit[1]:
            self._cache.move_to_end(token)
            return hit[0]
        try:
            header = jwt.get_unverified_header(token)
            key = self._keys.get(header.get("kid") or "")
            if key is None and len(self._keys) == 1 and not header.get("kid"):
                key = next(iter(self._keys.values()))
            if key is None:
                raise JwtError("unknown signing key")
            claims = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                audience=self.config.audience,
                issuer=self.config.issuer,
                options={"require": ["exp"], "verify_aud": self.config.audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise JwtError(str(exc)) from exc
        principal = self._principal(claims)
        self._cache[token] = (principal, float(claims["exp"]))
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        c = self.config
        tenant = claims.get(c.tenant_claim)
        user = claims.get(c.user_claim)
        if not isinstance(tenant, str) or not isinstance(user, str):
            raise JwtError(f"token lacks the {c.tenant_claim!r} or {c.user_claim!r} claim")
        models: tuple[str, ...] = ()
        if c.models_claim and isinstance(claims.get(c.models_claim), list):
            models = tuple(str(m) for m in claims[c.models_claim])
        tier = claims.get(c.tier_claim)
        return Principal(
            tenant=tenant,
            user=user,
            tier=tier if isinstance(tier, str) else c.default_tier,
            key_id=f"jwt:{user}"[:32],
            models=models,
            trusted=bool(c.trusted_claim and claims.get(c.trusted_claim) is True),
        )
