"""``sansio-signal demo``: the whole system on one machine, checked end to end.

A relay server starts in this process on a free loopback port; N Python peers
(aiortc) join one room through it; the full mesh forms; every peer sends one message to
every other over their data channel and waits for all of its own. The summary says
how long the mesh took, how long each pair took to open its channel, and how many
signaling frames each pair needed. The exit status is 0 only if every pair worked.

With ``nodes`` > 1 (``demo --nodes N``) the relay is scaled out instead: the demo starts
a ``redis-server`` of its own (a free loopback port, persistence off, a temporary
directory) and N ``sansio-signal serve --redis`` processes on it, and spreads the peers
over them round-robin (peer ``i`` signals through ``node{i % N}``). Every process it
starts is stopped by PID when it ends: after the run, on an error, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from sansio_signal import Limits

from .aiortc_peer import loopback_only
from .client import Client
from .server import RelayServer

ROOM = "demo"
HOST = "127.0.0.1"
REDIS_PACKAGE = "redis-server"
"""The Debian (and Ubuntu) package that has ``redis-server``."""
START_TIMEOUT = 15.0
"""How long ``redis-server`` or a ``serve`` process may take to start listening."""


class DemoError(Exception):
    """The demo cannot run (``redis-server`` missing, a process that would not start)."""


async def run_demo(
    peers: int,
    *,
    nodes: int = 1,
    timeout: float = 30.0,
    trace_dir: Path | None = None,
    progress: TextIO | None = sys.stderr,
) -> dict[str, Any]:
    """Run the demo; returns the summary (see ``--json``). ``nodes`` > 1: the peers are
    spread over that many ``serve --redis`` processes of a Redis the demo starts."""
    traces: list[TextIO] = []
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "peers": peers,
        "pairs": peers * (peers - 1) // 2,
        "pairs_connected": 0,
        "mesh_seconds": None,
        "ok": False,
        "nodes": nodes,
    }
    try:
        with loopback_only():
            if nodes == 1:
                relay_trace = None
                if trace_dir is not None:
                    relay_trace = (trace_dir / "relay.jsonl").open("w", encoding="utf-8")
                    traces.append(relay_trace)
                limits = Limits(rate_limit=0)
                async with RelayServer(port=0, limits=limits, trace=relay_trace) as server:
                    await _mesh(result, [server.url], timeout, trace_dir, traces, progress)
            else:
                async with _Cluster(nodes, peers, trace_dir) as cluster:
                    result["redis"] = cluster.redis_url
                    result["processes"] = dict(cluster.pids)
                    _say(progress, cluster.describe())
                    await _mesh(result, cluster.urls, timeout, trace_dir, traces, progress)
    finally:
        for f in traces:
            f.close()
    return result


def _say(out: TextIO | None, text: str) -> None:
    if out is not None:
        out.write(text + "\n")
        out.flush()


async def _mesh(
    result: dict[str, Any],
    urls: list[str],
    timeout: float,
    trace_dir: Path | None,
    traces: list[TextIO],
    progress: TextIO | None,
) -> None:
    """The peers (peer ``i`` on ``urls[i % len(urls)]``) form the mesh and exchange a
    message on every pair; ``result`` gets the summary."""
    peers = result["peers"]
    users = [f"peer{i}" for i in range(peers)]
    if len(urls) > 1:
        result["placement"] = {user: f"node{i % len(urls)}" for i, user in enumerate(users)}
        by_node: dict[str, list[str]] = {}
        for user, node in result["placement"].items():
            by_node.setdefault(node, []).append(user)
        for node, url in zip(sorted(by_node), urls, strict=False):
            _say(progress, f"{node} ({url}): {', '.join(by_node[node])}")
    clients = []
    for i, user in enumerate(users):
        trace = None
        if trace_dir is not None:
            trace = (trace_dir / f"{user}.jsonl").open("w", encoding="utf-8")
            traces.append(trace)
        url = urls[i % len(urls)]
        clients.append(Client(url, room_id=ROOM, user_id=user, trace=trace))
    loop = asyncio.get_running_loop()
    started = loop.time()
    show = _Progress(progress, clients, peers)
    try:
        try:
            await asyncio.gather(*(c.start() for c in clients))
            watcher = loop.create_task(show.run())
            try:
                await asyncio.wait_for(
                    asyncio.gather(
                        *(
                            c.wait_all_connected(expected=peers - 1, timeout=timeout)
                            for c in clients
                        )
                    ),
                    timeout,
                )
                mesh = loop.time() - started
                delivered = await asyncio.wait_for(_exchange(clients), timeout)
            finally:
                watcher.cancel()
                show.done()
        except TimeoutError:
            mesh, delivered = None, set()
        result.update(_summary(clients, started, mesh, delivered))
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


class _Cluster:
    """A ``redis-server`` and ``nodes`` ``sansio-signal serve --redis`` processes on it,
    each on a free loopback port, in a temporary directory (their logs are there).

    ``async with`` starts them (:class:`DemoError` when one will not start) and stops
    every one of them by PID at exit, however the block ends: SIGTERM, then SIGKILL after
    a few seconds, and each is reaped. :func:`stop_leftovers` is the last resort for a
    stop that was itself interrupted.
    """

    def __init__(self, nodes: int, peers: int, trace_dir: Path | None) -> None:
        self.nodes, self.peers, self.trace_dir = nodes, peers, trace_dir
        self.urls: list[str] = []
        self.pids: dict[str, int] = {}
        self.redis_url = ""
        self._procs: list[tuple[str, asyncio.subprocess.Process]] = []
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    async def __aenter__(self) -> _Cluster:
        executable = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
        if executable is None:
            raise DemoError(
                "--nodes needs redis-server, and it is not on PATH: install the Debian "
                f"package '{REDIS_PACKAGE}' (apt-get install {REDIS_PACKAGE})"
            )
        if importlib.util.find_spec("redis") is None:
            raise DemoError(
                "--nodes needs redis-py for serve --redis: pip install 'sansio-signal[redis]'"
            )
        self._dir = tempfile.TemporaryDirectory(prefix="sansio-signal-demo-")
        try:
            await self._start_redis(executable)
            for i in range(self.nodes):
                await self._start_node(f"node{i}")
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def workdir(self) -> Path:
        assert self._dir is not None
        return Path(self._dir.name)

    def describe(self) -> str:
        port = self.redis_url.rsplit(":", 1)[1].split("/")[0]
        return (
            f"redis-server on {HOST}:{port} (pid {self.pids['redis-server']}, persistence "
            f"off), {self.nodes} relay processes: "
            + ", ".join(
                f"{name} pid {pid}" for name, pid in self.pids.items() if name != "redis-server"
            )
        )

    def _spawned(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self._procs.append((name, proc))
        self.pids[name] = proc.pid
        _children[proc.pid] = name

    async def _start_redis(self, executable: str) -> None:
        for attempt in range(3):  # a port another process takes first is picked again
            port = _free_port()
            proc = await asyncio.create_subprocess_exec(
                executable,
                "--port", str(port),
                "--bind", HOST,
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", str(self.workdir),
                "--logfile", "redis.log",
                "--loglevel", "warning",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                cwd=self.workdir,
            )  # fmt: skip
            self._spawned("redis-server", proc)
            if await _answers_ping(proc, port, START_TIMEOUT):
                self.redis_url = f"redis://{HOST}:{port}/0"
                return
            log = self._tail("redis.log")
            await _stop(proc)
            if attempt == 2 or "Address already in use" not in log:
                raise DemoError(f"redis-server did not start on {HOST}:{port}: {log}")

    async def _start_node(self, name: str) -> None:
        argv = ["--port", "0", "--redis", self.redis_url, "--node-id", name]
        argv += ["--rate-limit", "0", "--max-room-size", str(max(32, self.peers))]
        if self.trace_dir is not None:
            argv += ["--trace", str(self.trace_dir.resolve() / f"relay-{name}.jsonl")]
        log = (self.workdir / f"{name}.log").open("wb")
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sansio_signal", "serve", *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=self.workdir,  # not a checkout: its sansio_signal/ would shadow ours
            )  # fmt: skip
        finally:
            log.close()
        self._spawned(name, proc)
        assert proc.stdout is not None
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)).decode()
        except TimeoutError:
            line = ""
        if not line.startswith("listening on ws://"):
            raise DemoError(f"{name} (serve --redis) did not start: {self._tail(name + '.log')}")
        self.urls.append(line.removeprefix("listening on ").strip())

    def _tail(self, file: str) -> str:
        path = self.workdir / file
        text = path.read_text(errors="replace") if path.exists() else ""
        return text.strip()[-1000:] or "(nothing logged)"

    async def stop(self) -> None:
        """Stop every process (the relays first, then Redis) by PID; remove the
        directory. Idempotent."""
        while self._procs:
            _name, proc = self._procs.pop()
            await _stop(proc)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


_children: dict[int, str] = {}
"""PIDs the demo started and has not reaped yet (for :func:`stop_leftovers`)."""


async def _stop(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    """SIGTERM ``proc``, SIGKILL it if it has not exited within ``grace``; reap it."""
    try:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
    finally:
        if proc.returncode is not None:
            _children.pop(proc.pid, None)


def stop_leftovers() -> None:
    """SIGKILL and reap any process of the demo still running (when its orderly stop was
    interrupted, e.g. by a second Ctrl-C)."""
    for pid in list(_children):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        _children.pop(pid, None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


async def _answers_ping(proc: asyncio.subprocess.Process, port: int, timeout: float) -> bool:
    """Whether ``redis-server`` (``proc``) answers ``PING`` on ``port`` within
    ``timeout`` (polled: nothing else says when it listens); False once it exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline and proc.returncode is None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1)
            try:
                writer.write(b"*1\r\n$4\r\nPING\r\n")
                if await asyncio.wait_for(reader.readline(), 1) == b"+PONG\r\n":
                    return True
            finally:
                writer.close()
        except (OSError, TimeoutError):
            pass
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.02)  # the poll interval; notices an exit
    return False


async def _exchange(clients: list[Client]) -> set[tuple[str, str]]:
    """Everyone sends to everyone; returns the (sender, receiver) pairs that arrived."""
    for client in clients:
        for peer_id in client.connected_peers():
            client.send(peer_id, f"hello {peer_id}, from {client.user_id}")
    delivered: set[tuple[str, str]] = set()

    async def receive(client: Client) -> None:
        want = len(clients) - 1
        async for message in client.messages():
            if message.text == f"hello {client.user_id}, from {message.from_user_id}":
                delivered.add((message.from_user_id, client.user_id))
            if sum(1 for _, to in delivered if to == client.user_id) >= want:
                return

    await asyncio.gather(*(receive(c) for c in clients))
    return delivered


def _summary(
    clients: list[Client], started: float, mesh: float | None, delivered: set[tuple[str, str]]
) -> dict[str, Any]:
    by_user = {c.user_id: c for c in clients}
    pairs = []
    for a, b in itertools.combinations(sorted(by_user), 2):
        pa, pb = by_user[a].peers.get(b), by_user[b].peers.get(a)
        opened = [p.channel_at for p in (pa, pb) if p is not None and p.channel_at is not None]
        worked = len(opened) == 2 and (a, b) in delivered and (b, a) in delivered
        routes = {p.route.pair_type for p in (pa, pb) if p is not None and p.route is not None}
        pairs.append(
            {
                "pair": [a, b],
                # host, srflx or relay (both ends see one pair; "/" if they disagree)
                "candidate_pair": "/".join(sorted(routes)) or None,
                "open_seconds": round(max(opened) - started, 4) if len(opened) == 2 else None,
                "signaling_frames": (pa.frames_sent if pa else 0) + (pb.frames_sent if pb else 0),
                "messages_exchanged": worked,
            }
        )
    connected = sum(1 for p in pairs if p["messages_exchanged"])
    return {
        "pairs_connected": connected,
        "mesh_seconds": None if mesh is None else round(mesh, 4),
        "ok": connected == len(pairs),
        "pair_details": pairs,
    }


class _Progress:
    """A one-line progress display on stderr while the mesh forms."""

    def __init__(self, out: TextIO | None, clients: list[Client], peers: int) -> None:
        self.out, self.clients, self.peers = out, clients, peers

    def line(self) -> str:
        ends = sum(len(c.connected_peers()) for c in self.clients)
        total = self.peers * (self.peers - 1)
        return f"\rforming the mesh: {ends // 2}/{total // 2} pairs open"

    async def run(self) -> None:
        while self.out is not None:
            self.out.write(self.line())
            self.out.flush()
            await asyncio.sleep(0.05)  # a display refresh, not synchronisation

    def done(self) -> None:
        if self.out is not None:
            self.out.write(self.line() + "\n")
            self.out.flush()


def print_summary(result: dict[str, Any], out: TextIO = sys.stdout) -> None:
    """The readable summary."""
    mesh = result["mesh_seconds"]
    placement: dict[str, str] = result.get("placement") or {}
    where = ""
    if placement:
        where = f" on {result['nodes']} relay processes sharing one Redis"
    out.write(
        f"{result['peers']} peers{where}, {result['pairs']} pairs: "
        f"{result['pairs_connected']} connected and exchanged messages\n"
    )
    out.write(f"time to full mesh: {'-' if mesh is None else f'{mesh * 1000:.0f} ms'}\n")
    nodes = f" {'via relays':>15}" if placement else ""
    out.write(
        f"{'pair':24} {'channel open':>13} {'signaling frames':>17} {'ICE pair':>8}{nodes}"
        "  message\n"
    )
    for p in result["pair_details"]:
        opened = "-" if p["open_seconds"] is None else f"{p['open_seconds'] * 1000:.0f} ms"
        via = ""
        if placement:
            via = f" {' ↔ '.join(placement[user] for user in p['pair']):>15}"
        out.write(
            f"{' ↔ '.join(p['pair']):24} {opened:>13} {p['signaling_frames']:>17} "
            f"{p['candidate_pair'] or '-':>8}{via}  "
            f"{'ok' if p['messages_exchanged'] else 'FAILED'}\n"
        )
    out.write("OK: every pair worked\n" if result["ok"] else "FAILED: not every pair worked\n")


def main_demo(
    peers: int, as_json: bool, trace_dir: str | None, timeout: float, nodes: int = 1
) -> int:
    """Entry point of ``sansio-signal demo``: 0 when every pair worked, 1 when not, 2
    when the demo cannot run, 130 on Ctrl-C and 143 on SIGTERM (its processes stopped)."""
    terminated: list[int] = []

    async def main() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None

        def on_sigterm() -> None:
            terminated.append(signal.SIGTERM)
            task.cancel()

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
        return await run_demo(
            peers,
            nodes=nodes,
            timeout=timeout,
            trace_dir=None if trace_dir is None else Path(trace_dir),
            progress=None if as_json else sys.stderr,
        )

    try:
        result = asyncio.run(main())
    except DemoError as exc:
        print(f"sansio-signal demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nsansio-signal demo: interrupted; its processes are stopped", file=sys.stderr)
        return 130
    except asyncio.CancelledError:
        if not terminated:
            raise
        print("sansio-signal demo: SIGTERM; its processes are stopped", file=sys.stderr)
        return 143
    finally:
        stop_leftovers()
    if as_json:
        print(json.dumps(result))
    else:
        print_summary(result)
    return 0 if result["ok"] else 1
