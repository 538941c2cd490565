"""The lean Redis client: URLs it takes, pipelining, NOSCRIPT, timeouts and reconnection."""

from __future__ import annotations

import asyncio
import socket

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sluice.admission.limits import FailoverLimiter, Kind, Plan, RateBucket, RedisLimiter
from sluice.admission.limits.resp import RespClient, encode
from tests.admission.services import REDIS_URL
from tests.governance.tcp_proxy import TcpProxy


def test_encoding_is_resp2_bulk_strings() -> None:
    assert encode(["EVALSHA", "ab", 1, b"k", "é"]) == (
        b"*5\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$1\r\nk\r\n$2\r\n\xc3\xa9\r\n"
    )


@pytest.mark.parametrize(
    ("url", "lean"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("redis://:secret@redis.internal:6380/3", True),
        ("redis://user:secret@redis.internal/1", True),
        ("rediss://redis.internal:6380/0", False),  # TLS: redis-py
        ("unix:///run/redis.sock", False),
        ("redis://127.0.0.1:6379/0?socket_keepalive=1", False),
    ],
)
def test_plain_urls_get_the_lean_client_and_the_rest_keep_redis_py(url: str, lean: bool) -> None:
    client = RespClient.from_url(url)
    assert (client is not None) == lean
    if "secret" in url:
        assert client is not None and client._auth is not None and client._auth[-1] == "secret"


async def test_concurrent_calls_pipeline_on_one_connection_and_errors_stay_per_call(
    redis_client: Redis, redis_prefix: str
) -> None:
    client = RespClient.from_url(REDIS_URL)
    assert client is not None
    key = "{" + redis_prefix + "}:n"
    try:
        replies = await asyncio.gather(*(client.call(["INCR", key]) for _ in range(200)))
        assert sorted(replies) == list(range(1, 201))
        with pytest.raises(ResponseError):
            await client.call(["NOSUCHCOMMAND"])
        assert await client.call(["GET", key]) == b"200"  # the connection is still in step
    finally:
        await client.close()


async def test_a_script_unknown_to_redis_is_sent_in_full_once(
    redis_client: Redis, redis_prefix: str
) -> None:
    client = RespClient.from_url(REDIS_URL)
    assert client is not None
    script = f"return '{redis_prefix}'"  # a script this Redis has never seen
    script_obj = redis_client.register_script(script)
    try:
        assert (await redis_client.script_exists(script_obj.sha)) == [False]
        assert await client.evalsha(script_obj.sha, script, [], []) == redis_prefix.encode()
        assert (await redis_client.script_exists(script_obj.sha)) == [True]
        assert await client.evalsha(script_obj.sha, script, [], []) == redis_prefix.encode()
    finally:
        await client.close()


async def test_a_silent_server_times_out_and_the_next_call_reconnects(
    redis_client: Redis,
) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    port = silent.getsockname()[1]
    client = RespClient(port=port, timeout=0.1)
    try:
        with pytest.raises(RedisTimeoutError):
            await client.call(["PING"])
    finally:
        await client.close()
        silent.close()
    with pytest.raises(RedisConnectionError):  # nothing listens there any more
        await RespClient(port=port, timeout=0.5).call(["PING"])


async def test_failover_through_the_lean_client_falls_back_and_recovers(
    redis_prefix: str,
) -> None:
    host, port = REDIS_URL.split("//", 1)[1].split("/", 1)[0].split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.up()
    lean = RespClient(port=proxy.port, timeout=0.2)
    limiter = FailoverLimiter(
        RedisLimiter(Redis(port=proxy.port), redis_prefix, lean), retry_interval=0.1
    )
    plan = Plan(rates=(RateBucket("key:k:requests", Kind.REQUESTS, 1000, 60.0, 1),))
    try:
        assert (await limiter.reserve(plan, "a", 60)).backend == "redis"
        await proxy.down()
        verdict = await limiter.reserve(plan, "b", 60)
        assert verdict.allowed and verdict.backend == "memory"  # fail-open: local limits
        assert limiter.degraded
        await proxy.up()  # same port
        for _ in range(50):
            await asyncio.sleep(0.05)
            verdict = await limiter.reserve(plan, "c", 60)
            if verdict.backend == "redis":
                break
        assert verdict.backend == "redis" and not limiter.degraded
    finally:
        await limiter.close()
        await proxy.down()
