"""A real ``redis-server`` for tests and benchmarks: :class:`RedisServer` and the
``redis_server`` fixture.

``RedisServer`` starts ``redis-server`` on a free loopback port with persistence off
(``--save "" --appendonly no``) in a temporary ``--dir``, waits until it answers ``PING``
(polling the socket, bounded by a timeout), and stops it by PID: SIGTERM, then SIGKILL,
and the child is reaped. :meth:`RedisServer.kill` (SIGKILL) makes it die as in a crash;
:meth:`RedisServer.restart` brings it back on the same port. It is a context manager.

The ``redis_server`` fixture (function scope) yields a started server and stops it after
the test, passed or failed. A test module uses it with ``from redisfix import
redis_server`` (pytest puts ``tests/`` on ``sys.path``). Without ``redis-server`` on
``PATH`` the test is skipped, naming the Debian package, except when the environment
variable ``CI`` is set (non-empty): then it fails, because CI must run these tests.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import pytest
from wsutil import terminate

HOST = "127.0.0.1"
DEBIAN_PACKAGE = "redis-server"
MISSING = (
    "redis-server not found on PATH: install the Debian package "
    f"'{DEBIAN_PACKAGE}' (apt-get install {DEBIAN_PACKAGE})"
)

_running: set[RedisServer] = set()
"""Servers started and not yet stopped: stopped at interpreter exit, should a test or a
benchmark forget one (or be interrupted between start and stop)."""


def redis_server_executable() -> str | None:
    """The ``redis-server`` to run: ``$REDIS_SERVER`` if set, else the one on ``PATH``."""
    return os.environ.get("REDIS_SERVER") or shutil.which("redis-server")


def require_redis_server() -> str:
    """The ``redis-server`` executable; else skip the test (fail it when ``$CI`` is set)."""
    executable = redis_server_executable()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail(f"{MISSING}; CI is set, so the Redis tests must run", pytrace=False)
        pytest.skip(MISSING)
    return executable


def free_port() -> int:
    """A TCP port on :data:`HOST` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis server on ``HOST:port`` answers ``PING`` with ``+PONG`` (raw RESP)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = s.recv(64)
                if not chunk:
                    return False
                reply += chunk
            return reply == b"+PONG\r\n"
    except OSError:
        return False


def server_pid(port: int, timeout: float = 0.5) -> int | None:
    """The ``process_id`` of the Redis server answering on ``HOST:port`` (``INFO server``);
    None when nothing answers. Tells our server from another one on the same port."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
            reply = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                reply += chunk
                header, sep, body = reply.partition(b"\r\n")
                if sep and not header.startswith(b"$"):
                    return None  # an error (-LOADING ...) or not Redis
                if sep and len(body) >= int(header[1:]):
                    break
    except (OSError, ValueError):
        return None
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.partition(":")[2])
    return None


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1``: ``with RedisServer() as r: r.url``.

    ``port`` 0 (the default) picks a free port at the first :meth:`start` and keeps it for
    :meth:`restart`. ``args`` are extra ``redis-server`` options (e.g. ``["--maxmemory",
    "64mb"]``).
    """

    def __init__(
        self,
        port: int = 0,
        *,
        executable: str | None = None,
        args: Sequence[str] = (),
        start_timeout: float = 10.0,
    ) -> None:
        found = executable or redis_server_executable()
        if found is None:
            raise FileNotFoundError(MISSING)
        self.executable = found
        self.port = port
        self.args = list(args)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        if not self.port:
            raise RuntimeError("RedisServer not started yet: no port")
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        """The PID of the running (or last) ``redis-server`` process."""
        if self.proc is None:
            raise RuntimeError("RedisServer not started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        """Whether the process has been started and has not exited (nor been reaped)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def logfile(self) -> Path | None:
        return Path(self._dir.name) / "redis.log" if self._dir is not None else None

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's log file (where it says why it did not start)."""
        path = self.logfile
        if path is None or not path.exists():
            return ""
        return path.read_text(errors="replace")[-chars:]

    # ------------------------------------------------------------------ life cycle

    def argv(self) -> list[str]:
        assert self._dir is not None
        return [
            self.executable,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            self._dir.name,
            "--logfile",
            "redis.log",
            "--loglevel",
            "warning",
            *self.args,
        ]

    def start(self) -> RedisServer:
        """Start the server and return once it answers ``PING``.

        A port picked here that another process takes between the pick and the server's
        bind is picked again (three tries); a port given by the caller is not.
        """
        if self.running:
            raise RuntimeError(f"redis-server already running (pid {self.pid})")
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="redisfix-")
        pick = self.port == 0
        for attempt in range(3):
            if pick:
                self.port = free_port()
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=self._dir.name,
            )
            _running.add(self)
            if self._wait_ready(self.start_timeout):
                return self
            message = self._failure_message()
            self._terminate()
            if not pick or attempt == 2 or "Address already in use" not in message:
                raise RuntimeError(message)
        raise AssertionError("unreachable")

    def _wait_ready(self, timeout: float) -> bool:
        """Poll the port until our process answers (True: ``INFO`` names its PID and it
        answers ``PING``), the process exits or ``timeout`` ends (False)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server_pid(self.port) == self.proc.pid and ping(self.port):
                return True
            try:  # the poll interval, and it notices a process that exited at once
                self.proc.wait(timeout=0.005)
                return False
            except subprocess.TimeoutExpired:
                pass
        return False

    def _failure_message(self) -> str:
        assert self.proc is not None
        code = self.proc.poll()
        state = f"exited with {code}" if code is not None else "not answering PING"
        stderr = b""
        if code is not None and self.proc.stderr is not None:
            stderr = self.proc.stderr.read()
        return (
            f"redis-server on port {self.port} {state} within {self.start_timeout:g} s; "
            f"log: {self.log_tail()!r}; stderr: {stderr.decode(errors='replace')[-1000:]!r}"
        )

    def _terminate(self, timeout: float = 5.0, first: int = signal.SIGTERM) -> None:
        """``first`` (SIGTERM), wait up to ``timeout``, SIGKILL; the child is reaped
        either way."""
        proc = self.proc
        if proc is None:
            return
        terminate(proc, timeout, first)
        if proc.stderr is not None:
            proc.stderr.close()
        _running.discard(self)

    def kill(self) -> None:
        """SIGKILL the server (as if it crashed) and reap it; the port stops answering."""
        if self.proc is None:
            raise RuntimeError("RedisServer not started")
        self._terminate(first=signal.SIGKILL)

    def restart(self) -> RedisServer:
        """Start the server again on the same port (stopping it first if it runs); its
        data is gone, as after a crash of a Redis without persistence."""
        if self.running:
            self._terminate()
        return self.start()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory. Idempotent."""
        self._terminate()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc is not None else None
        return f"RedisServer(port={self.port}, pid={pid}, running={self.running})"


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_running):
        server.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh ``redis-server`` on a free loopback port for one test, stopped after it.

    Skipped when ``redis-server`` is missing (Debian package ``redis-server``); failed
    instead when ``$CI`` is set.
    """
    server = RedisServer(executable=require_redis_server())
    try:
        server.start()
        yield server
    finally:
        server.stop()
