"""Short-lived TURN credentials: the "TURN REST API" scheme coturn implements
(``use-auth-secret`` / ``static-auth-secret``).

A TURN server and the relay share a secret. For a client the relay makes

- ``username`` = the expiry as Unix seconds, then ``:`` and an optional label
  (``1764100000:alice``);
- ``credential`` = ``base64(HMAC-SHA1(secret, username))``;

and the TURN server checks the same HMAC and that the expiry has not passed. A
credential is worth something for ``ttl`` seconds only, so publishing one in a web page
does not give the world a TURN server. Pure: the wall time is an argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Sequence

import attrs


def is_turn_url(url: str) -> bool:
    """Whether ``url`` names a TURN server (``turn:`` or ``turns:``), not a STUN one."""
    return url.startswith(("turn:", "turns:"))


def candidate_type_from(url: str) -> str:
    """The type of candidate the ICE server at ``url`` gives when it works: ``relay``
    (a TURN server's allocation), else ``srflx`` (a STUN server's reflexive address)."""
    return "relay" if is_turn_url(url) else "srflx"


def turn_credentials(
    secret: bytes, *, wall_time: float, ttl: float, label: str | None = None
) -> tuple[str, str]:
    """``(username, credential)`` valid until ``wall_time + ttl`` (rounded up to a whole
    second) for a TURN server sharing ``secret``."""
    if not ttl > 0 or not math.isfinite(ttl):
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    if label is not None and ":" in label:
        raise ValueError(f"a label may not contain ':' (got {label!r})")
    expiry = math.ceil(wall_time + ttl)
    username = str(expiry) if label is None else f"{expiry}:{label}"
    digest = hmac.new(secret, username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def credential_expiry(username: str) -> int | None:
    """The expiry (Unix seconds) a short-lived credential's ``username`` carries, or
    ``None`` when the username is not of this scheme (a static TURN user)."""
    head = username.partition(":")[0]
    return int(head) if head.isascii() and head.isdigit() and len(head) <= 12 else None


@attrs.frozen
class TurnConfig:
    """TURN servers that take credentials made with ``secret`` for ``ttl`` seconds."""

    urls: tuple[str, ...]
    secret: bytes = attrs.field(repr=False)
    ttl: float = 3600.0

    def __attrs_post_init__(self) -> None:
        if not self.urls:
            raise ValueError("a TURN configuration needs at least one turn: or turns: URL")
        for url in self.urls:
            if not is_turn_url(url):
                raise ValueError(f"a TURN URL starts with turn: or turns:, got {url!r}")
        if not self.secret:
            raise ValueError("the TURN secret is empty")
        turn_credentials(self.secret, wall_time=0.0, ttl=self.ttl)  # checks ttl

    def ice_server(self, wall_time: float, label: str | None = None) -> dict[str, str | list[str]]:
        """An RTCIceServer dictionary with fresh credentials."""
        username, credential = turn_credentials(
            self.secret, wall_time=wall_time, ttl=self.ttl, label=label
        )
        urls: list[str] = list(self.urls)
        return {"urls": urls, "username": username, "credential": credential}


def load_turn_secret(data: bytes) -> bytes:
    """A secret file's bytes without trailing whitespace (as coturn reads its
    ``static-auth-secret``); an empty one is an error."""
    secret = data.rstrip()
    if not secret:
        raise ValueError("the TURN secret file is empty")
    return secret


def with_turn(
    static: Sequence[dict[str, str]], turn: TurnConfig | None, wall_time: float
) -> list[dict[str, str | list[str]]]:
    """The ICE servers for a client now: the static ones, then TURN with fresh
    credentials (when configured)."""
    servers: list[dict[str, str | list[str]]] = [dict(s) for s in static]
    if turn is not None:
        servers.append(turn.ice_server(wall_time))
    return servers
