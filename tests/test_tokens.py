"""Signed join tokens: the codec, the relay's check, and the commands."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from wsutil import spawn_serve

from sansio_signal import RelayMachine
from sansio_signal.testing import RelayHarness, counting_tokens
from sansio_signal.tokens import (
    LEEWAY,
    Claims,
    InvalidToken,
    TokenAuthority,
    issue_token,
    load_secret,
    verify_token,
)

SECRET = b"correct horse battery staple"
NOW = 1_764_100_000.0
ids = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)


@given(user=ids, room=ids, ttl=st.floats(min_value=1, max_value=1e7))
def test_a_token_says_what_it_was_issued_for(user: str, room: str, ttl: float) -> None:
    token = issue_token(SECRET, user_id=user, room=room, ttl=ttl, wall_time=NOW)
    claims = verify_token(SECRET, token, wall_time=NOW)
    assert claims == Claims(user_id=user, room=room, expires=round(NOW + ttl, 3))
    assert claims.allows(user, room)


@given(position=st.integers(min_value=0), replacement=st.characters(codec="ascii"))
def test_any_tampering_is_caught(position: int, replacement: str) -> None:
    token = issue_token(SECRET, user_id="alice", room="demo", ttl=60, wall_time=NOW)
    i = position % len(token)
    forged = token[:i] + replacement + token[i + 1 :]
    if forged != token:
        with pytest.raises(InvalidToken):
            verify_token(SECRET, forged, wall_time=NOW)


@given(garbage=st.text(max_size=200))
def test_garbage_is_an_invalid_token_never_a_crash(garbage: str) -> None:
    with pytest.raises(InvalidToken):
        verify_token(SECRET, garbage, wall_time=NOW)


def test_another_secret_and_expiry_with_leeway() -> None:
    token = issue_token(SECRET, user_id="alice", room="demo", ttl=60, wall_time=NOW)
    with pytest.raises(InvalidToken, match="signature"):
        verify_token(b"another secret", token, wall_time=NOW)
    assert verify_token(SECRET, token, wall_time=NOW + 60 + LEEWAY - 1).user_id == "alice"
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(SECRET, token, wall_time=NOW + 60 + LEEWAY + 1)


def test_the_secret_file_rule() -> None:
    assert load_secret(b"s3cret \n\t") == b"s3cret"
    assert load_secret(b"  lead") == b"  lead"
    with pytest.raises(ValueError):
        load_secret(b" \n")


def harness() -> RelayHarness:
    directory_machine = RelayMachine(new_token=counting_tokens())
    authority = TokenAuthority(SECRET, room_size=directory_machine.directory.size)
    machine = RelayMachine(
        new_token=counting_tokens(), directory=directory_machine.directory, authorize=authority
    )
    return RelayHarness(machine=machine, now=5.0, wall_time=NOW)


def join(h: RelayHarness, conn: int, room: str, user: str, token: str | None) -> str:
    frame = {
        "channel": "webrtc-dashboard-rooms",
        "type": "join-room",
        "roomId": room,
        "userId": user,
    }
    if token is not None:
        frame["token"] = token
    h.send(conn, frame)
    reply = h.take(conn)[-1]
    return str(reply.get("code", reply["type"]))


@pytest.mark.parametrize(
    ("user", "room", "token_for", "expected"),
    [
        ("alice", "demo", ("alice", "demo", 60), "user-joined-room"),
        ("alice", "demo", None, "unauthorized"),  # missing
        ("alice", "demo", ("alice", "demo", -100), "unauthorized"),  # expired
        ("alice", "demo", ("alice", "other", 60), "unauthorized"),  # wrong room
        ("alice", "demo", ("bob", "demo", 60), "unauthorized"),  # wrong user
        ("alice", "team-7", ("alice", "team-*", 60), "user-joined-room"),  # a pattern
        ("alice", "teams", ("alice", "team-*", 60), "unauthorized"),
    ],
)
def test_the_relay_checks_every_join(
    user: str, room: str, token_for: tuple[str, str, float] | None, expected: str
) -> None:
    h = harness()
    conn = h.connect()
    token = None
    if token_for is not None:
        u, r, ttl = token_for
        token = issue_token(SECRET, user_id=u, room=r, ttl=max(ttl, 1), wall_time=NOW + min(ttl, 0))
    assert join(h, conn, room, user, token) == expected


def test_expiry_is_checked_against_the_wall_time_not_the_monotonic_now() -> None:
    h = harness()  # now=5.0 (monotonic), wall_time=NOW
    token = issue_token(SECRET, user_id="alice", room="demo", ttl=60, wall_time=NOW)
    h.wall_time = NOW + 60 + LEEWAY + 1  # the wall clock moved on; now did not
    assert join(h, h.connect(), "demo", "alice", token) == "unauthorized"
    h.wall_time = NOW  # stepped back (NTP): valid again, whatever now says
    h.advance(3600.0)
    h.wall_time = NOW
    assert join(h, h.connect(), "demo", "alice", token) == "user-joined-room"


def test_a_tampered_token_is_refused_and_reveals_nothing() -> None:
    h = harness()
    a, b = h.connect(), h.connect()
    good = issue_token(SECRET, user_id="alice", room="demo", ttl=60, wall_time=NOW)
    assert join(h, a, "demo", "alice", good) == "user-joined-room"
    # Same id, no valid token: unauthorized, not user-id-taken (nothing about the room).
    tampered = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    assert join(h, b, "demo", "alice", tampered) == "unauthorized"
    assert h.take(a) == []


def test_max_room_size_claim() -> None:
    h = harness()
    for i, expected in enumerate(["user-joined-room", "user-joined-room", "unauthorized"]):
        token = issue_token(
            SECRET, user_id=f"u{i}", room="small", ttl=60, wall_time=NOW, max_room_size=2
        )
        assert join(h, h.connect(), "small", f"u{i}", token) == expected


def test_token_command_and_a_server_with_a_secret(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "sansio_signal",
            "token",
            "--secret-file",
            str(secret_file),
            "--user",
            "alice",
            "--room",
            "demo",
            "--ttl",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=True,
    )
    token = made.stdout.strip()
    assert made.stdout == token + "\n" and "\n" not in token

    async def main() -> None:
        server, url = await spawn_serve(tmp_path, "--secret-file", str(secret_file))
        try:
            async with connect(url) as ws:
                frame = {
                    "channel": "webrtc-dashboard-rooms",
                    "type": "join-room",
                    "roomId": "demo",
                    "userId": "alice",
                }
                await ws.send(json.dumps(frame))
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["code"] == "unauthorized"
                await ws.send(json.dumps({**frame, "token": token}))
                reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert reply["type"] == "user-joined-room"
        finally:
            server.terminate()
            await server.wait()

    asyncio.run(main())


def test_an_open_server_says_so(tmp_path: Path) -> None:
    async def main() -> str:
        server, _ = await spawn_serve(tmp_path)
        assert server.stderr is not None
        server.terminate()
        await server.wait()
        return (await server.stderr.read()).decode()

    assert "the server is open" in asyncio.run(main())
