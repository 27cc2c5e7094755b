"""The ``redis_server`` fixture: a real server that answers, dies on ``kill()``, comes back
on the same port on ``restart()``, and leaves no process behind."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import redis
import redis.asyncio
from redisfix import RedisServer, ping, redis_server, require_redis_server, server_pid

__all__ = ["redis_server"]  # the fixture, imported for pytest


def gone(pid: int) -> bool:
    """Whether no process (not even a zombie) has this PID."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_fixture_starts_a_server_that_answers(redis_server: RedisServer) -> None:
    assert redis_server.running
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping() is True
        assert client.set("k", "v") is True
        assert client.get("k") == b"v"
        config = client.config_get("save")
        assert config["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
        assert int(client.info("server")["process_id"]) == redis_server.pid
    finally:
        client.close()


def test_asyncio_client_talks_to_it(redis_server: RedisServer) -> None:
    async def main() -> bytes | None:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            await client.rpush("l", "a", "b")
            value = await client.lpop("l")
            assert value is None or isinstance(value, bytes)
            return value
        finally:
            await client.aclose()

    assert asyncio.run(main()) == b"a"


def test_kill_makes_it_unreachable_and_restart_brings_it_back_on_the_same_port(
    redis_server: RedisServer,
) -> None:
    port, first_pid = redis_server.port, redis_server.pid
    client = redis.Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.set("k", "v")
        redis_server.kill()
        assert not redis_server.running
        assert gone(first_pid)
        assert not ping(port)
        with pytest.raises(redis.ConnectionError):
            client.ping()

        redis_server.restart()
        assert redis_server.port == port
        assert redis_server.pid != first_pid
        assert ping(port)
        assert server_pid(port) == redis_server.pid
        assert client.ping() is True  # the same client reconnects by itself
        assert client.get("k") is None  # no persistence: a restarted Redis is empty
    finally:
        client.close()


def test_stop_leaves_no_process_and_is_idempotent() -> None:
    server = RedisServer(executable=require_redis_server())
    with server:
        pid, port = server.pid, server.port
        assert ping(port)
    assert gone(pid)
    assert not ping(port)
    server.stop()  # again: nothing to do


def test_restart_of_a_running_server_replaces_the_process() -> None:
    with RedisServer(executable=require_redis_server()) as server:
        first = server.pid
        server.restart()
        assert gone(first)
        assert server.running and ping(server.port)
        last = server.pid
    assert gone(last)


def test_a_port_in_use_is_an_error_with_the_reason() -> None:
    with RedisServer(executable=require_redis_server()) as taken:
        other = RedisServer(taken.port, executable=taken.executable, start_timeout=5)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="exited"):
            other.start()
        assert time.monotonic() - started < 5  # noticed the exit, did not wait it out
        assert other.proc is not None and gone(other.proc.pid)
        other.stop()
