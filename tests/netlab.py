"""A network lab for tests (issue 15): :class:`NetLab`, Linux network namespaces joined by
veth pairs, made and torn down by the test itself.

Topology (all addresses in 10.77.0.0/16, which exists only inside the lab's namespaces;
no namespace has a default route, nothing reaches the host or the outside)::

    A  10.77.1.2/24 --veth-- 10.77.1.1/24  T  10.77.2.1/24 --veth-- 10.77.2.2/24  B
                                           |
                                  10.77.0.1/32 on T's lo: the service address
                                  (coturn, ``serve``) that A and B both reach

``A`` and ``B`` route 10.77.0.0/16 via T, but T does not forward
(``net.ipv4.ip_forward=0``): A and B reach T's addresses and not each other, so two
peers there can meet only through a TURN server in T.

Namespace names start with ``nl<pid>-<n>-`` (the test process's PID, a counter), so
parallel runs do not clash; every namespace made is deleted on exit from the ``with``
block, passed or failed, and at interpreter exit should a lab be left open. Processes
started with :meth:`NetLab.run_in` are killed (SIGTERM, then SIGKILL, reaped) before
their namespace goes.

:meth:`NetLab.drop` adds an nftables rule on a namespace's input hook dropping a random
share of packets (``numgen random mod 100 < N``); :meth:`NetLab.cut` drops all of them;
:meth:`NetLab.restore` removes the rule. With ``both_ways=True`` (A or B only) the same
share of the packets that *leave* over the namespace's link is dropped too, where they
arrive in T (input hook, ``iifname "toA"``): a lossy or cut link in both directions, and
the sender's ``sendto`` still succeeds, as on a real link (an output-hook drop would fail
it with EPERM). :func:`socket_in` opens a socket inside a
namespace (``setns(2)`` in a short-lived thread: a socket keeps its namespace), so a test
probes the lab without a subprocess.

:func:`require_netns` skips a test where namespaces cannot be made (not root, no ``ip``
or ``nft``), saying why, except when ``CI`` is set: then it fails.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import pytest
from wsutil import terminate

SERVICE = "10.77.0.1"
"""T's service address (on its ``lo``): where coturn and ``serve`` listen."""
ADDRESSES = {"A": "10.77.1.2", "B": "10.77.2.2", "T": SERVICE}
"""The address by which each namespace is reached (T: its service address)."""
LINKS = {"A": ("10.77.1.2", "10.77.1.1"), "B": ("10.77.2.2", "10.77.2.1")}
"""Each peer namespace's (own address, T's end of its link)."""

CLONE_NEWNET = 0x40000000
_counter = itertools.count()
_open: set[NetLab] = set()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def namespaces() -> set[str]:
    """The names of the network namespaces that exist now (``ip netns list``)."""
    listing = _ip("netns", "list").stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add): run as root (CI does)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"{tool} not found on PATH: install the Debian package '{package}'"
    return None


def require_netns() -> None:
    """Skip the test where namespaces cannot be made; fail it instead when ``CI`` is set."""
    reason = netns_unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so the network lab tests must run", pytrace=False)
        pytest.skip(reason)


def socket_in(
    ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM
) -> socket.socket:
    """A socket created inside the namespace ``ns`` (``/run/netns/NS``); it stays there."""
    libc = ctypes.CDLL(None, use_errno=True)
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def enter_and_open() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns {ns}: {os.strerror(errno)}")
            finally:
                os.close(fd)
            made.append(socket.socket(family, kind))
        except BaseException as e:
            failed.append(e)

    thread = threading.Thread(target=enter_and_open, name=f"setns-{ns}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


def _stale_prefix_pids() -> None:
    """Delete lab namespaces left by test processes that no longer exist (a SIGKILLed run)."""
    listing = _ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith("nl") or "-" not in name:
            continue
        pid = name[2:].partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            _ip("netns", "del", name, check=False)


class NetLab:
    """``with NetLab() as lab:``: namespaces ``lab.ns["A"]``, ``["B"]``, ``["T"]`` as
    described in the module docstring."""

    def __init__(self) -> None:
        self.prefix = f"nl{os.getpid()}-{next(_counter)}-"
        self.ns = {role: self.prefix + role for role in ("A", "B", "T")}
        self._made: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []

    # ------------------------------------------------------------------ life cycle

    def start(self) -> NetLab:
        _stale_prefix_pids()
        _open.add(self)
        try:
            for name in self.ns.values():
                _ip("netns", "add", name)
                self._made.append(name)
                self.sh(name, "ip", "link", "set", "lo", "up")
            t = self.ns["T"]
            self.sh(t, "sysctl", "-qw", "net.ipv4.ip_forward=0")
            self.sh(t, "ip", "addr", "add", f"{SERVICE}/32", "dev", "lo")
            for role, (own, gateway) in LINKS.items():
                peer = self.ns[role]
                _ip(
                    "link", "add", "eth0", "netns", peer, "type", "veth",
                    "peer", "name", f"to{role}", "netns", t,
                )  # fmt: skip
                self.sh(peer, "ip", "addr", "add", f"{own}/24", "dev", "eth0")
                self.sh(peer, "ip", "link", "set", "eth0", "up")
                self.sh(t, "ip", "addr", "add", f"{gateway}/24", "dev", f"to{role}")
                self.sh(t, "ip", "link", "set", f"to{role}", "up")
                self.sh(peer, "ip", "route", "add", "10.77.0.0/16", "via", gateway)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill the lab's processes, then delete every namespace it made. Idempotent."""
        procs, self._procs = self._procs, []
        for proc in procs:
            terminate(proc)
        made, self._made = self._made, []
        for name in reversed(made):
            _ip("netns", "del", name, check=False)
        _open.discard(self)

    def __enter__(self) -> NetLab:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ processes

    def _name(self, ns: str) -> str:
        return self.ns.get(ns, ns)

    def argv_in(self, ns: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``ns`` (a role, ``"A"``, or a full namespace name)."""
        return ["ip", "netns", "exec", self._name(ns), *argv]

    def sh(self, ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a short command inside ``ns`` to completion; raise with its stderr if it fails."""
        done = subprocess.run(
            self.argv_in(ns, argv), capture_output=True, text=True, timeout=10, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {ns}: {done.stderr.strip()}")
        return done

    def run_in(self, ns: str, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``ns`` (``ip netns exec`` execs it: the PID is its own);
        killed when the lab closes."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv_in(ns, argv), **popen)
        self._procs.append(proc)
        return proc

    def socket(
        self, ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM
    ) -> socket.socket:
        """A socket inside ``ns``."""
        return socket_in(self._name(ns), family, kind)

    # ------------------------------------------------------------------ faults

    def drop(
        self, ns: str, fraction: float, *, both_ways: bool = False, tcp_port: int | None = None
    ) -> None:
        """Drop a random ``fraction`` (0..1) of the packets arriving in ``ns``; replaces an
        earlier :meth:`drop` or :meth:`cut` there. ``both_ways`` (``ns`` ``"A"`` or
        ``"B"``): also of the packets ``ns`` sends over its link (dropped on arrival in T).
        ``tcp_port``: only the packets of TCP connections to that port (a lossy path to
        one server, the rest of the traffic untouched)."""
        percent = round(fraction * 100)
        if not 0 <= percent <= 100:
            raise ValueError(f"fraction must be within 0..1, not {fraction}")
        if both_ways and ns not in LINKS:
            raise ValueError(f"both_ways needs a peer namespace with a link ({list(LINKS)})")
        self.restore(ns)
        incoming = "" if tcp_port is None else f"tcp sport {tcp_port} "
        outgoing = "" if tcp_port is None else f"tcp dport {tcp_port} "
        self._nft(ns, _drop_rules("lab", percent, incoming))
        if both_ways:
            self._nft("T", _drop_rules(f"lab_{ns}", percent, f'iifname "to{ns}" {outgoing}'))

    def cut(self, ns: str, *, both_ways: bool = False) -> None:
        """Drop every packet arriving in ``ns`` (a link cut, seen from there); with
        ``both_ways``, every packet it sends over its link too."""
        self.drop(ns, 1.0, both_ways=both_ways)

    def restore(self, ns: str) -> None:
        """Remove the lab's rules in ``ns`` (and in T for ``ns``'s link): packets pass
        again."""
        for where, table in self._tables(ns):
            if self._has_table(where, table):
                self.sh(where, "nft", "delete", "table", "inet", table)

    def dropped(self, ns: str) -> int:
        """Packets the drop rules for ``ns`` have dropped so far (their counters)."""
        total = 0
        for where, table in self._tables(ns):
            if not self._has_table(where, table):
                continue
            listing = self.sh(where, "nft", "list", "chain", "inet", table, "input").stdout
            words = listing.split()
            total += sum(int(words[i + 1]) for i, w in enumerate(words) if w == "packets")
        return total

    def _has_table(self, ns: str, table: str) -> bool:
        listing = self.sh(ns, "nft", "list", "tables").stdout
        return f"table inet {table}" in listing.splitlines()

    def _tables(self, ns: str) -> list[tuple[str, str]]:
        """``(namespace, table)`` of every drop rule :meth:`drop` may have made for ``ns``."""
        tables = [(ns, "lab")]
        if ns in LINKS:
            tables.append(("T", f"lab_{ns}"))
        return tables

    def _nft(self, ns: str, rules: str) -> None:
        done = subprocess.run(
            self.argv_in(ns, ["nft", "-f", "-"]),
            input=rules,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"nft in {ns}: {done.stderr.strip()}")


def _drop_rules(table: str, percent: int, match: str) -> str:
    """nft commands: a table with an input chain dropping ``percent`` % of the packets
    that ``match`` (an nft expression, or ``""`` for all)."""
    rules = (
        f"add table inet {table}\n"
        f"add chain inet {table} input {{ type filter hook input priority 0; policy accept; }}\n"
    )
    if percent >= 100:
        rules += f"add rule inet {table} input {match}counter drop\n"
    elif percent > 0:
        rules += (
            f"add rule inet {table} input {match}numgen random mod 100 < {percent} counter drop\n"
        )
    return rules


@atexit.register
def _close_leftovers() -> None:
    for lab in list(_open):
        lab.close()
