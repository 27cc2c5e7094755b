"""Join tokens (standard HS256 JWTs): the check, the relay's use of it, and the commands."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import re
import subprocess
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from wsutil import spawn_serve

from sansio_signal import RelayMachine
from sansio_signal.adapters.cli import main as cli_main
from sansio_signal.testing import RelayHarness, counting_tokens
from sansio_signal.tokens import (
    LEEWAY,
    MIN_SECRET_BYTES,
    Claims,
    InvalidToken,
    TokenAuthority,
    issue_token,
    load_secret,
    room_matches,
    verify_token,
)
from sansio_signal.wire import JoinRoom

SECRET = b"correct horse battery staple, and then some"  # >= 32 bytes: no key warning
NOW = 1_764_100_000.0
ids = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_token(header: dict[str, Any], payload: str | bytes, secret: bytes = SECRET) -> str:
    """A token built by hand, HMAC-SHA256-signed whatever the header says (for headers and
    payloads no JWT library would write)."""
    body = payload.encode() if isinstance(payload, str) else payload
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(body)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def unsigned(payload: dict[str, Any]) -> str:
    """An ``alg: none`` token (RFC 7519 §6), as an attacker would send one."""
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(payload).encode())}."


def minted(**claims: Any) -> str:
    """A token as an application backend makes one: PyJWT directly."""
    return jwt.encode(claims, SECRET, algorithm="HS256")


# The codec ---------------------------------------------------------------------------


@given(user=ids, room=ids, ttl=st.floats(min_value=0.001, max_value=1e7))
def test_a_token_says_what_it_was_issued_for(user: str, room: str, ttl: float) -> None:
    token = issue_token(SECRET, user_id=user, room=room, ttl=ttl, wall_time=NOW)
    claims = verify_token(SECRET, token, wall_time=NOW)
    assert claims == Claims(
        user_id=user, room=room, expires=math.ceil(NOW + ttl), issued_at=math.floor(NOW)
    )
    assert claims.allows(user, room)


def test_issue_token_writes_a_standard_jwt() -> None:
    token = issue_token(SECRET, user_id="alice", room="demo", ttl=600, wall_time=NOW)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert payload == {"sub": "alice", "room": "demo", "iat": int(NOW), "exp": int(NOW) + 600}
    with_max = issue_token(
        SECRET, user_id="alice", room="demo", ttl=600, wall_time=NOW, max_room_size=3
    )
    assert jwt.decode(with_max, options={"verify_signature": False})["max"] == 3


@pytest.mark.parametrize("ttl", [math.inf, math.nan, 0, -1, -math.inf])
def test_issue_token_wants_a_finite_positive_ttl(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        issue_token(SECRET, user_id="alice", room="demo", ttl=ttl, wall_time=NOW)


def test_tokens_minted_by_pyjwt_are_accepted() -> None:
    plain = minted(sub="alice", room="demo", exp=int(NOW) + 600)
    assert verify_token(SECRET, plain, wall_time=NOW).user_id == "alice"
    # PyJWT turns datetimes into NumericDates; nbf and iat in the past are fine.
    full = minted(
        sub="alice",
        room="team-*",
        exp=datetime.fromtimestamp(NOW + 600, tz=UTC),
        nbf=datetime.fromtimestamp(NOW - 5, tz=UTC),
        iat=datetime.fromtimestamp(NOW - 5, tz=UTC),
        jti="abc",
        app="whatever the backend likes",
    )
    claims = verify_token(SECRET, full, wall_time=NOW)
    assert (claims.room, claims.expires, claims.not_before) == ("team-*", NOW + 600, NOW - 5)
    # A NumericDate may have a fraction (RFC 7519 §2).
    assert verify_token(SECRET, minted(sub="a", room="r", exp=NOW + 0.5), wall_time=NOW)


def test_time_is_the_argument_never_the_clock() -> None:
    # Valid in 1970 and long expired by any real clock: judged by wall_time alone.
    token = minted(sub="alice", room="demo", exp=1_000, nbf=500, iat=500)
    assert verify_token(SECRET, token, wall_time=900).user_id == "alice"
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(SECRET, token, wall_time=1_000 + LEEWAY)
    # And one that is not valid yet by the real clock, but is at wall_time.
    future = time.time() + 10 * 365 * 86400
    later = minted(sub="alice", room="demo", exp=future + 60, nbf=future, iat=future)
    assert verify_token(SECRET, later, wall_time=future).user_id == "alice"


def test_expiry_with_leeway() -> None:
    token = minted(sub="alice", room="demo", exp=int(NOW) + 60)
    assert verify_token(SECRET, token, wall_time=NOW + 60 + LEEWAY - 1).user_id == "alice"
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(SECRET, token, wall_time=NOW + 60 + LEEWAY)
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(SECRET, token, wall_time=NOW + 60 + LEEWAY + 1)


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_not_before_and_issued_at_are_honoured_with_leeway(claim: str) -> None:
    token = minted(sub="alice", room="demo", exp=int(NOW) + 600, **{claim: int(NOW) + 100})
    with pytest.raises(InvalidToken, match=claim):
        verify_token(SECRET, token, wall_time=NOW)
    with pytest.raises(InvalidToken, match=claim):
        verify_token(SECRET, token, wall_time=NOW + 100 - LEEWAY - 1)
    assert verify_token(SECRET, token, wall_time=NOW + 100 - LEEWAY).user_id == "alice"
    assert verify_token(SECRET, token, wall_time=NOW + 100).user_id == "alice"


def test_another_secret_is_refused() -> None:
    token = issue_token(SECRET, user_id="alice", room="demo", ttl=60, wall_time=NOW)
    with pytest.raises(InvalidToken, match="signature"):
        verify_token(b"another secret, also 32 bytes long", token, wall_time=NOW)


GOOD = {"sub": "alice", "room": "demo", "exp": int(NOW) + 600}


def test_only_hs256_is_accepted() -> None:
    none = unsigned(GOOD)  # no signature at all
    assert jwt.decode(none, options={"verify_signature": False}) == GOOD  # well-formed
    # HS512 with the right secret: genuine, but not the algorithm agreed.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT: the secret is short for HS512
        hs512 = jwt.encode(GOOD, SECRET, algorithm="HS512")
    # An RS256 header over an HMAC signature (the algorithm-confusion attack), and a
    # header that spells HS256 differently, both signed with the secret.
    rs256 = raw_token({"alg": "RS256", "typ": "JWT"}, json.dumps(GOOD))
    lower = raw_token({"alg": "hs256", "typ": "JWT"}, json.dumps(GOOD))
    no_alg = raw_token({"typ": "JWT"}, json.dumps(GOOD))
    for token in [none, none + "AAAA", hs512, rs256, lower, no_alg]:
        with pytest.raises(InvalidToken):
            verify_token(SECRET, token, wall_time=NOW)
    # The same hand-made token with the right header is accepted: only alg differed.
    assert verify_token(SECRET, raw_token({"alg": "HS256"}, json.dumps(GOOD)), wall_time=NOW)


@pytest.mark.parametrize("missing", ["sub", "room", "exp"])
def test_the_required_claims(missing: str) -> None:
    claims = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(InvalidToken):
        verify_token(SECRET, minted(**claims), wall_time=NOW)
    with pytest.raises(InvalidToken):  # null counts as missing
        verify_token(SECRET, minted(**{**claims, missing: None}), wall_time=NOW)


@pytest.mark.parametrize(
    "payload",
    [
        {**GOOD, "sub": 7},
        {**GOOD, "room": ["demo"]},
        {**GOOD, "exp": "tomorrow"},
        {**GOOD, "exp": True},
        {**GOOD, "nbf": "now"},
        {**GOOD, "iat": False},
        {**GOOD, "max": 0},
        {**GOOD, "max": 2.5},
        {**GOOD, "aud": "someone else"},  # RFC 7519 §4.1.3: we are in no audience
    ],
)
def test_claims_of_the_wrong_type_are_refused(payload: dict[str, Any]) -> None:
    with pytest.raises(InvalidToken):
        verify_token(SECRET, raw_token({"alg": "HS256"}, json.dumps(payload)), wall_time=NOW)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_numeric_date_is_finite(value: str) -> None:
    # json.loads reads these (and 1e999 is inf); a NaN exp would never compare as
    # expired. A huge int is a date, if a far one, as a backend may choose.
    payload = f'{{"sub":"alice","room":"demo","exp":{value}}}'
    with pytest.raises(InvalidToken):
        verify_token(SECRET, raw_token({"alg": "HS256"}, payload), wall_time=NOW)
    huge = '{"sub":"alice","room":"demo","exp":1' + "0" * 400 + "}"  # an int: finite
    assert verify_token(SECRET, raw_token({"alg": "HS256"}, huge), wall_time=NOW)


@given(position=st.integers(min_value=0), replacement=st.characters(codec="ascii"))
def test_any_tampering_is_caught(position: int, replacement: str) -> None:
    token = issue_token(SECRET, user_id="alice", room="demo", ttl=60, wall_time=NOW)
    i = position % len(token)
    forged = token[:i] + replacement + token[i + 1 :]
    if forged == token:
        return
    try:
        claims = verify_token(SECRET, forged, wall_time=NOW)
    except InvalidToken:
        return
    # base64url leaves unused bits in the signature's last character: flipping them
    # decodes to the same signature, so the same claims. Nothing else gets through.
    assert i == len(token) - 1
    assert claims == verify_token(SECRET, token, wall_time=NOW)


@given(garbage=st.text(max_size=200))
def test_garbage_is_an_invalid_token_never_a_crash(garbage: str) -> None:
    with pytest.raises(InvalidToken):
        verify_token(SECRET, garbage, wall_time=NOW)


segment = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")


@given(parts=st.lists(segment, min_size=1, max_size=5))
def test_jwt_shaped_garbage_is_invalid_never_a_crash(parts: list[str]) -> None:
    with pytest.raises(InvalidToken):
        verify_token(SECRET, ".".join(parts), wall_time=NOW)


@given(
    header=st.dictionaries(
        st.text(max_size=5),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=5),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=3), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=4,
    ),
    payload=st.binary(max_size=60),
)
def test_signed_junk_is_invalid_never_a_crash(header: dict[str, Any], payload: bytes) -> None:
    # Signed with the right secret, so every check past the signature sees it.
    token = raw_token({**header, "alg": "HS256"}, payload)
    with pytest.raises(InvalidToken):
        verify_token(SECRET, token, wall_time=NOW)


@pytest.mark.parametrize(
    "token",
    [
        "ñ",
        "eyJhbGciOiJIUzI1NiJ9.é.x",
        "\ud800",  # a lone surrogate, as json.loads makes from "\\ud800"
        issue_token(SECRET, user_id="alice", room="demo", ttl=60, wall_time=NOW) + "€",
        "",
        ".",
        "..",
        "a.b.c.d",
    ],
)
def test_non_ascii_and_malformed_tokens_are_invalid(token: str) -> None:
    with pytest.raises(InvalidToken):
        verify_token(SECRET, token, wall_time=NOW)


# Room patterns -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "room", "expected"),
    [
        ("demo", "demo", True),
        ("demo", "demo2", False),
        ("team-*", "team-a", True),
        ("team-*", "team-", True),  # any run, the empty one included
        ("team-*", "teamx", False),
        ("team-*", "team", False),
        ("*", "anything", True),
        ("*-eu", "room-eu", True),
        ("*-eu", "room-us", False),
        ("a*b*c", "abc", True),
        ("a*b*c", "axxbyyc", True),
        ("a*b*c", "acb", False),
        ("a*a", "a", False),
        ("**", "x", True),
        # Only * is special: ? and [...] are themselves (fnmatch would match these).
        ("team-?", "team-a", False),
        ("team-[a]", "team-a", False),
        ("team-[a-z]*", "team-b1", False),
        ("team-?", "team-?", True),  # literally (room ids cannot hold ? or [)
    ],
)
def test_room_patterns(pattern: str, room: str, expected: bool) -> None:
    assert room_matches(pattern, room) is expected


@given(
    pattern=st.text(alphabet="ab*?[]-", max_size=12), room=st.text(alphabet="ab?[]-", max_size=12)
)
def test_room_patterns_agree_with_a_reference(pattern: str, room: str) -> None:
    reference = ".*".join(re.escape(part) for part in pattern.split("*"))
    assert room_matches(pattern, room) is bool(re.fullmatch(reference, room, re.DOTALL))


def test_the_relay_gets_the_pattern_rule() -> None:
    h = harness()
    token = issue_token(SECRET, user_id="alice", room="team-?", ttl=60, wall_time=NOW)
    assert join(h, h.connect(), "team-a", "alice", token) == "unauthorized"


# Secrets -----------------------------------------------------------------------------


def test_the_secret_file_rule() -> None:
    assert load_secret(b"s3cret \n\t") == b"s3cret"
    assert load_secret(b"  lead") == b"  lead"
    with pytest.raises(ValueError):
        load_secret(b" \n")


def test_a_secret_that_looks_like_a_key_is_refused() -> None:
    # PyJWT refuses such HMAC keys (algorithm confusion); say so at load, not per join.
    with pytest.raises(ValueError, match="HS256"):
        load_secret(b"-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="HS256"):
        TokenAuthority(b"ssh-rsa AAAAB3NzaC1yc2E= someone")


def test_a_short_secret_warns_once_when_the_authority_is_made() -> None:
    with pytest.warns(Warning, match=f"shorter than the {MIN_SECRET_BYTES} bytes"):
        authority = TokenAuthority(b"short")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        token = jwt.encode(GOOD, b"short", algorithm="HS256")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each join's check is silent
        assert verify_token(b"short", token, wall_time=NOW).user_id == "alice"
        assert authority(JoinRoom(room_id="demo", user_id="alice", token=token), NOW)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TokenAuthority(SECRET)


# The relay ---------------------------------------------------------------------------


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


def test_the_relay_takes_a_backend_minted_token() -> None:
    h = harness()
    token = minted(sub="alice", room="demo", exp=int(NOW) + 600, iat=int(NOW))
    assert join(h, h.connect(), "demo", "alice", token) == "user-joined-room"
    h2 = harness()
    none = unsigned({"sub": "bob", "room": "demo", "exp": int(NOW) + 600})
    assert join(h2, h2.connect(), "demo", "bob", none) == "unauthorized"


@pytest.mark.parametrize("token", ["ñññ", "\u00e9.\u00e9.\u00e9", "x" * 500, "..."])
def test_a_malformed_join_token_is_unauthorized_never_an_error(token: str) -> None:
    h = harness()
    assert join(h, h.connect(), "demo", "alice", token) == "unauthorized"


def test_expiry_is_checked_against_the_wall_time_not_the_monotonic_now() -> None:
    h = harness()  # now=5.0 (monotonic), wall_time=NOW
    token = issue_token(SECRET, user_id="alice", room="demo", ttl=60, wall_time=NOW)
    h.wall_time = NOW + 60 + LEEWAY + 1  # the wall clock moved on; now did not
    assert join(h, h.connect(), "demo", "alice", token) == "unauthorized"
    h.advance(3600.0)
    h.wall_time = NOW  # stepped back (NTP): valid again, whatever now says
    assert join(h, h.connect(), "demo", "alice", token) == "user-joined-room"


def test_a_tampered_token_is_refused_and_reveals_nothing() -> None:
    h = harness()
    a, b = h.connect(), h.connect()
    good = issue_token(SECRET, user_id="alice", room="demo", ttl=60, wall_time=NOW)
    assert join(h, a, "demo", "alice", good) == "user-joined-room"
    # Same id, no valid token: unauthorized, not user-id-taken (nothing about the room).
    tampered = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    assert join(h, b, "demo", "alice", tampered) == "unauthorized"
    assert h.take(a) == []


def test_max_room_size_claim() -> None:
    h = harness()
    for i, expected in enumerate(["user-joined-room", "user-joined-room", "unauthorized"]):
        token = issue_token(
            SECRET, user_id=f"u{i}", room="small", ttl=60, wall_time=NOW, max_room_size=2
        )
        assert join(h, h.connect(), "small", f"u{i}", token) == expected


# The commands ------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", ["inf", "Infinity", "nan", "0", "-1", "-inf", "soon"])
def test_token_command_wants_a_finite_positive_ttl(
    ttl: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    argv = ["token", "--secret-file", str(secret_file), "--user", "a", "--room", "r"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*argv, f"--ttl={ttl}"])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "--ttl" in err and ("finite number of seconds > 0" in err or "not a number" in err)


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
    # Any JWT library reads it (here PyJWT, checking exp against the real clock).
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp"]})
    assert (payload["sub"], payload["room"]) == ("alice", "demo")
    assert payload["exp"] - payload["iat"] in (60, 61)

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
