"""Key format, hashing, the SQL key store (SQLite and PostgreSQL) and authentication."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from sluice.admission import keys
from sluice.admission.auth import Authenticator
from sluice.admission.key_store import KeyStore, api_keys
from sluice.admission.principal import AuthError
from tests.admission.services import FakeClock


def _count_store_and_hmac(monkeypatch: pytest.MonkeyPatch, store: KeyStore) -> list[str]:
    """Record each store lookup ("lookup") and HMAC verify ("hmac"), in order, still doing both."""
    calls: list[str] = []
    real_verify, real_get = keys.verify, store.get

    def verify(salt: bytes, stored: bytes, secret: str) -> bool:
        calls.append("hmac")
        return real_verify(salt, stored, secret)

    async def get(key_id: str) -> object:
        calls.append("lookup")
        return await real_get(key_id)

    monkeypatch.setattr(keys, "verify", verify)
    monkeypatch.setattr(store, "get", get)
    return calls


def test_generated_keys_have_the_prefix_and_parse_back() -> None:
    new = keys.generate()
    assert new.plaintext.startswith("sk-sluice-")
    parsed = keys.parse(new.plaintext)
    assert parsed is not None and parsed[0] == new.key_id
    assert keys.verify(new.salt, new.digest, parsed[1])
    other = "B" if parsed[1].endswith("A") else "A"  # a secret ending in "A" is 1 in 64
    assert not keys.verify(new.salt, new.digest, parsed[1][:-1] + other)
    assert new.display.endswith("-…") and parsed[1] not in new.display


@pytest.mark.parametrize(
    "token", ["", "sk-sluice-", "sk-other-0123456789ab-" + "a" * 43, "sk-sluice-XYZ-" + "a" * 43]
)
def test_malformed_keys_do_not_parse(token: str) -> None:
    assert keys.parse(token) is None


async def test_store_keeps_only_salted_digests(db_engine: AsyncEngine) -> None:
    store = KeyStore(db_engine)
    record, plaintext = await store.create(tenant="t1", user="alice", tier="pro", models=["m"])
    secret = plaintext.rsplit("-", 1)[1]
    async with db_engine.connect() as conn:
        rows = (await conn.execute(api_keys.select())).all()
    assert len(rows) == 1
    stored = " ".join(str(v) for v in rows[0])
    assert secret not in stored and plaintext not in stored
    again = await store.get(record.key_id)
    assert again is not None and again.models == ("m",) and again.tier == "pro"
    assert [r.key_id for r in await store.list()] == [record.key_id]
    assert await store.revoke(record.key_id)
    assert not await store.revoke(record.key_id)
    assert await store.list() == []
    assert len(await store.list(include_revoked=True)) == 1


async def _reject(auth: Authenticator, header: str | None) -> AuthError:
    with pytest.raises(AuthError) as info:
        await auth.authenticate(header)
    assert info.value.status == 401
    return info.value


async def test_every_bad_credential_is_a_401(sqlite_engine: AsyncEngine, clock: FakeClock) -> None:
    store = KeyStore(sqlite_engine)
    auth = Authenticator(store, cache_ttl=0.0, clock=clock)
    good, plaintext = await store.create(tenant="t", user="u", now=clock.now)
    expired, expired_key = await store.create(tenant="t", user="u", expires_at=clock.now + 10)
    revoked, revoked_key = await store.create(tenant="t", user="u")
    await store.revoke(revoked.key_id)

    principal = await auth.authenticate(f"Bearer {plaintext}")
    assert principal.key_id == good.key_id and principal.tenant == "t"
    assert (await _reject(auth, None)).code == "invalid_api_key"
    await _reject(auth, "Basic abc")
    await _reject(auth, "Bearer sk-sluice-nonsense")
    await _reject(auth, f"Bearer {plaintext[:-1]}{'B' if plaintext[-1] != 'B' else 'C'}")
    await _reject(auth, f"Bearer sk-sluice-0123456789ab-{'a' * 43}")
    await _reject(auth, f"Bearer {revoked_key}")
    assert (await auth.authenticate(f"Bearer {expired_key}")).key_id == expired.key_id
    clock.advance(11)
    await _reject(auth, f"Bearer {expired_key}")


async def test_revocation_takes_effect_after_the_cache_ttl(
    sqlite_engine: AsyncEngine, clock: FakeClock
) -> None:
    store = KeyStore(sqlite_engine)
    auth = Authenticator(store, cache_ttl=5.0, clock=clock)
    record, plaintext = await store.create(tenant="t", user="u")
    await auth.authenticate(f"Bearer {plaintext}")
    await store.revoke(record.key_id)
    await auth.authenticate(f"Bearer {plaintext}")  # still cached
    clock.advance(5.1)
    await _reject(auth, f"Bearer {plaintext}")


async def test_every_401_path_does_the_same_hashing_work(
    sqlite_engine: AsyncEngine, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Equal work, hence equal timing: one store lookup and one HMAC verify on every path."""
    store = KeyStore(sqlite_engine)
    auth = Authenticator(store, cache_ttl=0.0, clock=clock)
    _, good = await store.create(tenant="t", user="u")
    _, expired = await store.create(tenant="t", user="u", expires_at=clock.now - 1)
    revoked_record, revoked = await store.create(tenant="t", user="u")
    await store.revoke(revoked_record.key_id)
    calls = _count_store_and_hmac(monkeypatch, store)
    wrong = good[:-1] + ("B" if good[-1] != "B" else "C")
    unknown = f"sk-sluice-0123456789ab-{'a' * 43}"
    for token in (wrong, unknown, expired, revoked):
        calls.clear()
        with pytest.raises(AuthError):
            await auth.authenticate(f"Bearer {token}")
        assert calls == ["lookup", "hmac"], token


async def test_key_store_outage_serves_cached_keys_and_503s_the_rest(
    sqlite_engine: AsyncEngine, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = KeyStore(sqlite_engine)
    auth = Authenticator(store, cache_ttl=5.0, stale_ttl=600.0, clock=clock)
    _, known = await store.create(tenant="t", user="u")
    _, other = await store.create(tenant="t", user="v")
    await auth.authenticate(f"Bearer {known}")

    async def down(key_id: str) -> None:
        raise OSError("database unreachable")

    monkeypatch.setattr(store, "get", down)
    clock.advance(60)  # past the fresh TTL, within the stale one
    assert (await auth.authenticate(f"Bearer {known}")).user == "u"
    with pytest.raises(AuthError) as err:
        await auth.authenticate(f"Bearer {other}")
    assert err.value.status == 503


async def test_a_verified_key_is_served_from_the_cache_until_ttl_expiry_or_forget(
    sqlite_engine: AsyncEngine, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = KeyStore(sqlite_engine)
    auth = Authenticator(store, cache_ttl=5.0, clock=clock)
    record, plaintext = await store.create(tenant="t", user="u", expires_at=clock.now + 3)
    header = f"Bearer {plaintext}"
    first = await auth.authenticate(header)
    calls = _count_store_and_hmac(monkeypatch, store)
    assert await auth.authenticate(header) is first
    assert calls == []  # no store lookup, no HMAC
    wrong = plaintext[:-1] + ("B" if plaintext[-1] != "B" else "C")
    await _reject(auth, f"Bearer {wrong}")  # a different value is never a cache hit
    calls.clear()
    auth.forget(record.key_id)
    assert (await auth.authenticate(header)).key_id == record.key_id
    assert calls == ["lookup", "hmac"]
    clock.advance(3.1)  # the key's own expiry comes before the cache TTL
    await _reject(auth, header)


async def _refreshed(auth: Authenticator) -> None:
    """Wait for the background re-verifications started so far."""
    while auth._refresh_tasks:
        await asyncio.gather(*list(auth._refresh_tasks))


async def test_a_credential_in_use_is_reverified_in_the_background_before_it_expires(
    sqlite_engine: AsyncEngine, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A steady caller never waits for the store at expiry: in the last fifth of the TTL a hit
    starts one background re-verification (a fresh store read and one HMAC)."""
    store = KeyStore(sqlite_engine)
    auth = Authenticator(store, cache_ttl=5.0, clock=clock)
    _, plaintext = await store.create(tenant="t", user="u")
    header = f"Bearer {plaintext}"
    first = await auth.authenticate(header)
    calls = _count_store_and_hmac(monkeypatch, store)
    clock.advance(3.9)
    assert auth.cached(header) is first and calls == []  # not yet in the refresh window
    clock.advance(0.2)
    for _ in range(5):  # concurrent hits: one re-verification
        assert auth.cached(header) is first
    await _refreshed(auth)
    assert calls == ["lookup", "hmac"]
    clock.advance(4.5)  # past the first verification's TTL, within the re-verified one
    calls.clear()
    assert await auth.authenticate(header) is first
    assert calls == []


async def test_a_background_reverification_drops_a_revoked_key(
    sqlite_engine: AsyncEngine, clock: FakeClock
) -> None:
    store = KeyStore(sqlite_engine)
    auth = Authenticator(store, cache_ttl=5.0, clock=clock)
    record, plaintext = await store.create(tenant="t", user="u")
    header = f"Bearer {plaintext}"
    await auth.authenticate(header)
    await store.revoke(record.key_id)  # in another process: no forget here
    clock.advance(4.5)
    assert auth.cached(header) is not None  # still within the TTL of the last verification
    await _refreshed(auth)
    assert auth.cached(header) is None
    await _reject(auth, header)


async def test_forget_during_a_background_reverification_is_not_undone(
    sqlite_engine: AsyncEngine, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = KeyStore(sqlite_engine)
    auth = Authenticator(store, cache_ttl=5.0, clock=clock)
    record, plaintext = await store.create(tenant="t", user="u")
    header = f"Bearer {plaintext}"
    await auth.authenticate(header)
    gate = asyncio.Event()
    real_get = store.get

    async def slow_get(key_id: str) -> object:
        found = await real_get(key_id)  # read before the revocation below
        await gate.wait()
        return found

    monkeypatch.setattr(store, "get", slow_get)
    clock.advance(4.5)
    assert auth.cached(header) is not None  # starts the re-verification
    await asyncio.sleep(0.05)
    await store.revoke(record.key_id)
    auth.forget(record.key_id)  # the admin API's revocation in this process
    gate.set()
    await _refreshed(auth)
    assert auth.cached(header) is None
    monkeypatch.setattr(store, "get", real_get)
    await _reject(auth, header)
