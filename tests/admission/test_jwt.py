"""JWT bearer tokens verified against a JWKS file; claims mapped to tenant, user and tier."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy.ext.asyncio import AsyncEngine

from sluice.admission.auth import Authenticator
from sluice.admission.jwt_auth import JwtConfig, JwtError, JwtVerifier
from sluice.admission.key_store import KeyStore
from sluice.admission.principal import AuthError


def _keypair(kid: str) -> tuple[rsa.RSAPrivateKey, dict]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid=kid, alg="RS256", use="sig")
    return private, jwk


def _token(private: rsa.RSAPrivateKey, kid: str, **claims: object) -> str:
    payload = {
        "sub": "alice",
        "tenant": "acme",
        "tier": "enterprise",
        "iss": "idp",
        "aud": "sluice",
        "exp": int(time.time()) + 60,
        **claims,
    }
    return jwt.encode(payload, private, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def signer(tmp_path: Path) -> tuple[rsa.RSAPrivateKey, JwtVerifier]:
    private, jwk = _keypair("k1")
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [jwk]}))
    config = JwtConfig(
        enabled=True,
        jwks_file=str(jwks_file),
        issuer="idp",
        audience="sluice",
        models_claim="models",
    )
    return private, JwtVerifier(config)


def test_valid_token_maps_claims(signer: tuple[rsa.RSAPrivateKey, JwtVerifier]) -> None:
    private, verifier = signer
    p = verifier.verify(_token(private, "k1", models=["m1"]))
    assert (p.tenant, p.user, p.tier, p.models) == ("acme", "alice", "enterprise", ("m1",))
    assert p.key_id == "jwt:alice"


@pytest.mark.parametrize(
    "claims",
    [{"exp": int(time.time()) - 10}, {"aud": "other"}, {"iss": "evil"}, {"tenant": None}],
)
def test_bad_tokens_are_refused(
    signer: tuple[rsa.RSAPrivateKey, JwtVerifier], claims: dict
) -> None:
    private, verifier = signer
    with pytest.raises(JwtError):
        verifier.verify(_token(private, "k1", **claims))


def test_token_signed_by_an_unknown_key_is_refused(
    signer: tuple[rsa.RSAPrivateKey, JwtVerifier],
) -> None:
    _, verifier = signer
    other, _ = _keypair("k1")
    with pytest.raises(JwtError):
        verifier.verify(_token(other, "k1"))


async def test_authenticator_accepts_jwt_and_rejects_bad_ones_with_401(
    signer: tuple[rsa.RSAPrivateKey, JwtVerifier], sqlite_engine: AsyncEngine
) -> None:
    private, verifier = signer
    auth = Authenticator(KeyStore(sqlite_engine), verifier)
    principal = await auth.authenticate(f"Bearer {_token(private, 'k1')}")
    assert principal.tenant == "acme"
    with pytest.raises(AuthError) as err:
        await auth.authenticate(f"Bearer {_token(private, 'k1', aud='x')}")
    assert err.value.status == 401


async def test_jwks_from_a_url() -> None:
    from aiohttp import web

    private, jwk = _keypair("k9")
    app = web.Application()

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})

    app.router.add_get("/jwks.json", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        url = f"http://127.0.0.1:{port}/jwks.json"
        verifier = JwtVerifier(JwtConfig(enabled=True, jwks_url=url, audience="sluice"))
        await verifier.refresh_from_url()
        assert verifier.verify(_token(private, "k9")).user == "alice"
    finally:
        await runner.cleanup()
