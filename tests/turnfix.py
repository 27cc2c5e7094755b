"""A real ``turnserver`` (coturn) for tests: :class:`TurnServer`.

It listens on a free loopback UDP/TCP port with the TURN REST API scheme
(``--use-auth-secret --static-auth-secret=SECRET``), loopback peers allowed, no TLS, no
database, logging to a file in a temporary directory; ready once it answers a STUN
binding request (polled with a timeout); stopped by PID (SIGTERM, then SIGKILL, reaped).
``TurnServer(secret, host=ADDRESS, netns=NS)`` runs it inside a network namespace of
the lab (tests/netlab.py) instead, on ADDRESS:3478. Without ``turnserver`` on ``PATH`` a
test using :func:`require_turnserver` is skipped, naming the Debian package — except
when ``CI`` is set: then it fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pytest
from wsutil import terminate

MISSING = "turnserver not found on PATH: install the Debian package 'coturn'"


def require_turnserver() -> str:
    found = shutil.which("turnserver")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return found


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    with socket.socket() as t:  # free for TCP too (coturn listens on both)
        try:
            t.bind(("127.0.0.1", port))
        except OSError:
            return _free_udp_port()
    return port


def _stun_answers(
    port: int, timeout: float = 0.2, host: str = "127.0.0.1", netns: str | None = None
) -> bool:
    """Whether a STUN binding request to host:port gets a binding success (sent from inside
    the network namespace ``netns`` when given)."""
    request = struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, secrets.token_bytes(12))
    if netns is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    else:
        from netlab import socket_in  # only the lab needs setns

        sock = socket_in(netns)
    with sock as s:
        s.settimeout(timeout)
        s.sendto(request, (host, port))
        try:
            data = s.recv(2048)
        except OSError:
            return False
    return len(data) >= 20 and struct.unpack("!H", data[:2])[0] == 0x0101


class TurnServer:
    """coturn on loopback with the TURN REST API secret ``secret``."""

    def __init__(
        self,
        secret: bytes,
        realm: str = "sansio-signal.test",
        *,
        host: str = "127.0.0.1",
        netns: str | None = None,
    ) -> None:
        """``netns``: run it inside that network namespace (``ip netns exec``), listening and
        relaying on ``host`` there, on the standard port 3478 (the namespace is fresh)."""
        self.secret = secret
        self.realm = realm
        self.host = host
        self.netns = netns
        self.port = _free_udp_port() if netns is None else 3478
        self._dir = tempfile.TemporaryDirectory(prefix="turn-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"turn:{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return Path(self._dir.name) / "turn.log"

    def start(self, timeout: float = 10.0) -> TurnServer:
        binary = require_turnserver()
        prefix = [] if self.netns is None else ["ip", "netns", "exec", self.netns]
        self.proc = subprocess.Popen(
            [
                *prefix,
                binary,
                f"--listening-ip={self.host}",
                f"--relay-ip={self.host}",
                f"--listening-port={self.port}",
                "--use-auth-secret",
                f"--static-auth-secret={self.secret.decode()}",
                f"--realm={self.realm}",
                "--allow-loopback-peers",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--no-rfc5780",
                "--no-stun-backward-compatibility",
                "--min-port=49152",
                "--max-port=65000",
                f"--log-file={self.log}",
                "--simple-log",
                f"--pidfile={Path(self._dir.name) / 'turn.pid'}",
                f"--userdb={Path(self._dir.name) / 'turn.db'}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self._dir.name,
        )
        deadline = time.monotonic() + timeout
        while not _stun_answers(self.port, host=self.host, netns=self.netns):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                self.stop()
                raise RuntimeError(f"turnserver did not start: {tail}")
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            terminate(proc)
        self._dir.cleanup()

    def __enter__(self) -> TurnServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
