"""Real processes inside the network lab (tests/netlab.py): ``serve`` and ``sansio-signal
chat`` peers, run by their command lines inside a namespace, read line by line.

Every wait is on a line the process prints, bounded by a timeout (no sleeps).
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO

import pytest
from netlab import SERVICE, NetLab

SERVE_PORT = 8765
RELAY_URL = f"ws://{SERVICE}:{SERVE_PORT}/"
"""Where :func:`serve_in` listens: T's service address."""


def lines_of(stream: IO[str]) -> queue.Queue[str]:
    """The lines of ``stream`` as they come, read by a daemon thread."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def read_until(
    lines: queue.Queue[str], done: Callable[[str], bool], timeout: float, what: Callable[[], str]
) -> list[str]:
    """Read ``lines`` until ``done(line)``; the lines read. Fails after ``timeout``
    seconds, saying it saw no line with ``what()``."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"no line with {what()} within {timeout} s; last lines {seen[-30:]}")
        seen.append(line)
        if done(line):
            return seen


def wait_all(lines: queue.Queue[str], wanted: Iterable[str], timeout: float) -> list[str]:
    """Read ``lines`` until each of ``wanted`` was part of one (in any order); fail after
    ``timeout`` seconds. Returns the lines read."""
    left = set(wanted)

    def done(line: str) -> bool:
        left.difference_update({w for w in left if w in line})
        return not left

    return read_until(lines, done, timeout, lambda: str(sorted(left)))


def wait_any(lines: queue.Queue[str], wanted: Sequence[str], timeout: float) -> str:
    """Read ``lines`` until one contains any of ``wanted``; which one (the first listed
    of those it contains). Fails after ``timeout`` seconds."""
    last = read_until(
        lines, lambda line: any(w in line for w in wanted), timeout, lambda: f"any of {wanted}"
    )[-1]
    return next(w for w in wanted if w in last)


def spawn_piped(
    lab: NetLab, ns: str, argv: Sequence[str]
) -> tuple[subprocess.Popen[str], queue.Queue[str], queue.Queue[str]]:
    """``argv`` run inside ``ns`` with its stdin a pipe, and its stdout and stderr lines
    as they come."""
    proc: subprocess.Popen[str] = lab.run_in(
        ns,
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    return proc, lines_of(proc.stdout), lines_of(proc.stderr)


def serve_in(lab: NetLab, ns: str = "T", *args: str) -> queue.Queue[str]:
    """``sansio-signal serve`` on T's service address inside ``ns``, listening when this
    returns; its output lines (the relay logs joins, resumes and drops at INFO) from
    there on."""
    proc = lab.run_in(
        ns,
        [sys.executable, "-m", "sansio_signal", "serve", "--host", SERVICE,
         "--port", str(SERVE_PORT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = lines_of(proc.stdout)
    wait_all(lines, [f"listening on {RELAY_URL}"], 15)
    return lines


def turn_server_arg(url: str, username: str, credential: str) -> str:
    """A ``--ice-server`` value for a TURN server with credentials."""
    return f"{url},username={username},credential={credential}"


class ChatPeer:
    """``sansio-signal chat`` run inside a namespace: ``say`` writes a line to its
    stdin, ``out`` and ``err`` are the lines of its stdout (messages) and stderr (events,
    and log lines at ``--log-level``)."""

    def __init__(
        self,
        lab: NetLab,
        ns: str,
        user: str,
        *,
        room: str = "room",
        url: str = RELAY_URL,
        ice_servers: Sequence[str] = (),
        extra: Sequence[str] = (),
    ) -> None:
        self.user = user
        argv = [sys.executable, "-m", "sansio_signal", "chat", url, "--room", room,
                "--user", user]  # fmt: skip
        for server in ice_servers:
            argv += ["--ice-server", server]
        self.proc, self.out, self.err = spawn_piped(lab, ns, [*argv, *extra])

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def wait_err(self, wanted: str, timeout: float) -> list[str]:
        """stderr lines until one containing ``wanted``."""
        return wait_all(self.err, [wanted], timeout)

    def wait_out(self, wanted: str, timeout: float) -> list[str]:
        """stdout lines until one containing ``wanted``."""
        return wait_all(self.out, [wanted], timeout)

    def finish(self, timeout: float = 15) -> int:
        """End its input (it delivers what it read, leaves and exits); its exit code."""
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.proc.wait(timeout=timeout)
