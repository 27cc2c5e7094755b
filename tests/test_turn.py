"""Short-lived TURN credentials (issue 15): the scheme, and a real coturn that takes them.

The credentials ``sansio_signal.turn`` makes are checked by coturn itself
(``--use-auth-secret``): an allocation with fresh ones succeeds; expired ones, another
secret's, or a tampered username are refused.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import urllib.request
from pathlib import Path

import pytest
from aioice.stun import TransactionFailed
from aioice.turn import create_turn_endpoint
from turnfix import TurnServer
from wsutil import reap, spawn_serve

from sansio_signal.turn import (
    TurnConfig,
    candidate_type_from,
    credential_expiry,
    is_turn_url,
    load_turn_secret,
    turn_credentials,
    with_turn,
)

SECRET = b"north-wind-turn-secret-0123456789"


def test_the_credential_is_the_turn_rest_api_scheme() -> None:
    username, credential = turn_credentials(SECRET, wall_time=1_700_000_000.2, ttl=600)
    assert username == "1700000601"  # the expiry, rounded up
    expected = hmac.new(SECRET, b"1700000601", hashlib.sha1).digest()
    assert base64.b64decode(credential) == expected
    labelled, _ = turn_credentials(SECRET, wall_time=0, ttl=5, label="alice")
    assert labelled == "5:alice"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": float("inf")}, "ttl"),
        ({"ttl": 5, "label": "a:b"}, "label"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        turn_credentials(SECRET, wall_time=0, **kwargs)  # type: ignore[arg-type]


def test_a_turn_configuration_hands_out_fresh_credentials() -> None:
    config = TurnConfig(urls=("turn:127.0.0.1:3478",), secret=SECRET, ttl=60)
    servers = with_turn([{"urls": "stun:127.0.0.1:3478"}], config, wall_time=100.0)
    assert servers[0] == {"urls": "stun:127.0.0.1:3478"}
    assert servers[1]["urls"] == ["turn:127.0.0.1:3478"] and servers[1]["username"] == "160"
    assert SECRET.decode() not in repr(config)  # the secret stays out of logs
    with pytest.raises(ValueError, match="turn:"):
        TurnConfig(urls=("stun:x",), secret=SECRET)
    assert load_turn_secret(b"abc \n") == b"abc"
    with pytest.raises(ValueError, match="empty"):
        load_turn_secret(b" \n")


async def allocate(server: TurnServer, username: str, password: str) -> None:
    transport, _protocol = await create_turn_endpoint(
        asyncio.DatagramProtocol, ("127.0.0.1", server.port), username, password, lifetime=60
    )
    transport.close()


def test_coturn_takes_fresh_credentials_and_refuses_the_others() -> None:
    with TurnServer(SECRET) as server:
        now = time.time()
        fresh = turn_credentials(SECRET, wall_time=now, ttl=60)
        asyncio.run(asyncio.wait_for(allocate(server, *fresh), 10))
        expired = turn_credentials(SECRET, wall_time=now - 120, ttl=60)
        other = turn_credentials(b"another-secret-entirely-000000000", wall_time=now, ttl=60)
        tampered = (str(int(now) + 100_000), fresh[1])
        for username, password in (expired, other, tampered):
            with pytest.raises(TransactionFailed):
                asyncio.run(asyncio.wait_for(allocate(server, username, password), 10))


def test_serve_hands_out_credentials_that_coturn_takes(tmp_path: Path) -> None:
    """serve --turn-url --turn-secret-file --turn-ttl: each /config.json carries fresh
    credentials for the TURN server, and the TURN server sharing the secret takes them."""
    secret_file = tmp_path / "turn-secret"
    secret_file.write_bytes(SECRET + b"\n")

    async def scenario() -> None:
        with TurnServer(SECRET) as server:
            proc, url = await spawn_serve(
                tmp_path,
                "--turn-url",
                server.url,
                "--turn-secret-file",
                str(secret_file),
                "--turn-ttl",
                "120",
                "--ice-server",
                "stun:127.0.0.1:3478",
            )
            try:
                config_url = url.replace("ws://", "http://") + "config.json"
                before = time.time()
                with urllib.request.urlopen(config_url, timeout=5) as answer:
                    servers = json.loads(answer.read())["iceServers"]
                assert servers[0] == {"urls": "stun:127.0.0.1:3478"}
                turn = servers[1]
                assert turn["urls"] == [server.url]
                assert before + 120 <= int(turn["username"]) <= time.time() + 121
                await asyncio.wait_for(allocate(server, turn["username"], turn["credential"]), 10)
            finally:
                await reap(proc)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "flags", [["--turn-url", "turn:127.0.0.1:3478"], ["--turn-secret-file", "x"]]
)
def test_serve_wants_both_turn_flags(flags: list[str]) -> None:
    from sansio_signal.adapters.cli import main

    assert main(["serve", "--port", "0", *flags]) == 1


def test_the_expiry_is_read_back_from_a_username() -> None:
    """diagnose tells an expired credential from a wrong one by the expiry its username
    carries (sansio_signal.turn.credential_expiry)."""
    username, _ = turn_credentials(SECRET, wall_time=1_700_000_000, ttl=60, label="alice")
    assert credential_expiry(username) == 1_700_000_060
    assert credential_expiry("1700000060") == 1_700_000_060
    for static in ("alice", "", ":alice", "12ab:x", "١٢٣", "9" * 13):
        assert credential_expiry(static) is None, static


def test_the_candidate_an_ice_server_gives_is_told_by_its_scheme() -> None:
    """One rule for aiortc's adapter (which servers gave nothing) and diagnose (which
    reported failures explain a failed pair): a TURN server gives relay candidates, a
    STUN server reflexive ones."""
    for url, turn, kind in (
        ("turn:10.0.0.1:3478", True, "relay"),
        ("turns:turn.example.com:5349?transport=tcp", True, "relay"),
        ("stun:10.0.0.1:3478", False, "srflx"),
        ("stuns:stun.example.com", False, "srflx"),
    ):
        assert (is_turn_url(url), candidate_type_from(url)) == (turn, kind), url
