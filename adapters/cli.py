"""The ``sansio-signal`` command.

``sansio-signal serve`` runs the relay server until SIGINT (clients closed with 1001) or
SIGTERM (1012, a restart), after printing one line ``listening on ws://HOST:PORT/`` to
stdout. ``sansio-signal demo`` runs a relay
and N aiortc peers in one process and checks that the full mesh works.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sansio_signal import CloseCode, Limits, MemoryDirectory, RelayMachine, __version__
from sansio_signal.diagnose import diagnose
from sansio_signal.tokens import TokenAuthority, issue_token, load_secret, valid_ttl
from sansio_signal.turn import TurnConfig, is_turn_url, load_turn_secret

from .loglines import LogLines

if TYPE_CHECKING:
    from .redis_store import RedisStore
from .server import (
    DEFAULT_NODE_TIMEOUT,
    DEFAULT_OPEN_TIMEOUT,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    DEFAULT_SEND_BUFFER,
    SERVICE_RESTART,
    RelayServer,
    incarnation,
    normalize_origin,
)

_DEFAULTS = Limits()


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


_ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


def parse_ice_server(text: str) -> dict[str, str]:
    """One ``--ice-server`` value as an RTCIceServer dictionary.

    The syntax is ``URL`` or ``URL,username=NAME,credential=SECRET``: a STUN/TURN URL
    (RFC 7064/7065: no commas in it), then comma-separated ``key=value`` options. Only the
    first ``=`` of an option splits, so a credential may contain ``=`` (base64); it may
    not contain a comma. ``turn:``/``turns:`` need both options (browsers refuse a TURN
    server without them).
    """
    url, *options = text.split(",")
    url = url.strip()
    if not url.startswith(_ICE_SCHEMES) or len(url) <= url.index(":") + 1:
        raise argparse.ArgumentTypeError(
            f"an ICE server URL starts with stun:, stuns:, turn: or turns:, got {url!r}"
        )
    server = {"urls": url}
    for option in options:
        key, eq, value = option.partition("=")
        key = key.strip()
        if not eq or key not in ("username", "credential") or not value:
            raise argparse.ArgumentTypeError(
                f"ICE server options are username=NAME and credential=SECRET, got {option!r}"
            )
        if key in server:
            raise argparse.ArgumentTypeError(f"{key} given twice in {text!r}")
        server[key] = value
    if is_turn_url(url) and len(server) != 3:
        raise argparse.ArgumentTypeError(
            f"a TURN server needs username= and credential=: {url},username=NAME,credential=SECRET"
        )
    return server


def _origin(text: str) -> str:
    origin = normalize_origin(text)
    scheme, sep, host = origin.partition("://")
    if not sep or not scheme or not host or "/" in host:
        raise argparse.ArgumentTypeError(
            f"an origin is SCHEME://HOST[:PORT] as browsers send it, got {text!r}"
        )
    return origin


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="sansio-signal", description="WebRTC signaling: relay server and tools."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the relay server",
        description="Run the relay server until SIGINT (clients closed with 1001, going away) "
        "or SIGTERM (1012, service restart: clients come back).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    serve.add_argument(
        "--port",
        type=_port,
        default=8765,
        help="port to bind; 0 picks a free one (default %(default)s)",
    )
    limits = serve.add_argument_group("limits")
    limits.add_argument(
        "--max-frame-bytes",
        type=_positive_int,
        default=_DEFAULTS.max_frame_bytes,
        metavar="BYTES",
        help="largest accepted frame; larger closes with 1009 (default %(default)s)",
    )
    limits.add_argument(
        "--max-room-size",
        type=_positive_int,
        default=_DEFAULTS.max_room_size,
        metavar="USERS",
        help="members per room (default %(default)s)",
    )
    limits.add_argument(
        "--max-rooms",
        type=_positive_int,
        default=_DEFAULTS.max_rooms,
        metavar="ROOMS",
        help="rooms on this server; a join that would open one more gets room-full "
        "(default %(default)s)",
    )
    limits.add_argument(
        "--max-text-chars",
        type=_positive_int,
        default=_DEFAULTS.max_text_chars,
        metavar="CHARS",
        help="longest chat text (default %(default)s)",
    )
    limits.add_argument(
        "--rate-limit",
        type=_non_negative_float,
        default=_DEFAULTS.rate_limit,
        metavar="FRAMES_PER_S",
        help="sustained frames/s per connection; 0 turns it off (default %(default)s)",
    )
    limits.add_argument(
        "--rate-burst",
        type=_positive_int,
        default=_DEFAULTS.rate_burst,
        metavar="FRAMES",
        help="token-bucket depth (default %(default)s)",
    )
    limits.add_argument(
        "--abuse-errors",
        type=_positive_int,
        default=_DEFAULTS.abuse_errors,
        metavar="N",
        help="error replies within --abuse-window that close with 1008 (default %(default)s)",
    )
    limits.add_argument(
        "--abuse-window",
        type=_positive_float,
        default=_DEFAULTS.abuse_window,
        metavar="SECONDS",
        help="(default %(default)s)",
    )
    limits.add_argument(
        "--resume-grace",
        type=_non_negative_float,
        default=_DEFAULTS.resume_grace,
        metavar="SECONDS",
        help="how long a member whose socket dropped (no clean close) keeps its place for a "
        "resume; 0 = no resume (default %(default)s)",
    )
    limits.add_argument(
        "--resume-queue-frames",
        type=_positive_int,
        default=_DEFAULTS.resume_queue_frames,
        metavar="N",
        help="frames kept for a held member; one more ends its grace (default %(default)s)",
    )
    limits.add_argument(
        "--resume-queue-bytes",
        type=_positive_int,
        default=_DEFAULTS.resume_queue_bytes,
        metavar="BYTES",
        help="bytes kept for a held member; more ends its grace (default %(default)s)",
    )
    limits.add_argument(
        "--send-buffer",
        type=_positive_int,
        default=DEFAULT_SEND_BUFFER,
        metavar="BYTES",
        help="bytes queued for one client before it is closed as a slow "
        "consumer with 1013 (default %(default)s)",
    )
    limits.add_argument(
        "--max-connections-per-ip",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="connections (from accept) plus members held for a resume, per address; "
        "more are refused with HTTP 429; 0 = unlimited (default %(default)s)",
    )
    limits.add_argument(
        "--handshake-timeout",
        type=_positive_float,
        default=DEFAULT_OPEN_TIMEOUT,
        metavar="SECONDS",
        help="time a new connection has to send its HTTP request and complete the "
        "WebSocket handshake (default %(default)s)",
    )
    limits.add_argument(
        "--idle-timeout",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="close with 1001 a connection that sent no frame for this long (pings do "
        "not count); 0 = off (default %(default)s)",
    )
    limits.add_argument(
        "--ping-interval",
        type=_non_negative_float,
        default=DEFAULT_PING_INTERVAL,
        metavar="SECONDS",
        help="send a WebSocket ping this often; 0 = no keep-alive (default %(default)s)",
    )
    limits.add_argument(
        "--ping-timeout",
        type=_non_negative_float,
        default=DEFAULT_PING_TIMEOUT,
        metavar="SECONDS",
        help="drop a connection (1011) whose pong is this late; 0 = wait forever "
        "(default %(default)s)",
    )
    cluster = serve.add_argument_group("scale-out (many processes on one Redis)")
    cluster.add_argument(
        "--redis",
        metavar="URL",
        help="join the cluster of every serve started with this Redis URL (redis:// or "
        "rediss://); needs the 'redis' extra: pip install 'sansio-signal[redis]'",
    )
    cluster.add_argument(
        "--node-id",
        metavar="NAME",
        help="this process's name in the cluster, in logs, /metrics and /healthz (default: random)",
    )
    cluster.add_argument(
        "--node-timeout",
        type=_positive_float,
        default=DEFAULT_NODE_TIMEOUT,
        metavar="SECONDS",
        help="a process that stops answering is noticed within this (default %(default)s)",
    )
    serve.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        type=_origin,
        metavar="ORIGIN",
        help="accept WebSocket upgrades only from pages of this origin (e.g. "
        "https://app.example.org), repeatable; others get HTTP 403, requests without "
        "Origin (not a browser) are accepted (default: any origin)",
    )
    serve.add_argument(
        "--ice-server",
        action="append",
        default=[],
        type=parse_ice_server,
        metavar="URL[,username=NAME,credential=SECRET]",
        help="a STUN/TURN server for the browser page (served at /config.json), "
        "repeatable (default: none)",
    )
    turn = serve.add_argument_group("TURN with short-lived credentials (coturn use-auth-secret)")
    turn.add_argument(
        "--turn-url",
        action="append",
        default=[],
        metavar="URL",
        help="a turn: or turns: URL of a TURN server sharing --turn-secret-file; repeatable",
    )
    turn.add_argument(
        "--turn-secret-file",
        metavar="PATH",
        help="the TURN server's static-auth-secret (trailing whitespace removed): each "
        "client gets credentials made with it, valid for --turn-ttl seconds",
    )
    turn.add_argument(
        "--turn-ttl",
        type=_positive_float,
        default=3600.0,
        metavar="SECONDS",
        help="how long the credentials handed out stay valid (default %(default)s)",
    )
    serve.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(default %(default)s)",
    )
    serve.add_argument(
        "--trace",
        metavar="FILE",
        help="write every event into and action out of the relay machine to FILE as JSON lines",
    )
    serve.add_argument(
        "--secret-file",
        metavar="PATH",
        help="require signed join tokens made with this secret (its bytes, trailing "
        f"whitespace removed); or set {SECRET_ENV}. Without either the server is open",
    )

    token = commands.add_parser(
        "token",
        help="print a signed join token",
        description="Print a token that lets USER join ROOM (an id, or a pattern with *) "
        "on a server started with the same secret, for SECONDS.",
    )
    token.add_argument("--secret-file", required=True, metavar="PATH")
    token.add_argument("--user", required=True)
    token.add_argument("--room", required=True, help="a room id, or a pattern like 'team-*'")

    def finite_ttl(text: str) -> float:
        try:
            value = float(text)  # reads "inf" and "nan" too: valid_ttl refuses them
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not valid_ttl(value):
            raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
        return value

    token.add_argument(
        "--ttl",
        type=finite_ttl,
        required=True,
        metavar="SECONDS",
        help="how long the token is valid (finite, > 0); checked with 30 s of clock skew",
    )
    token.add_argument(
        "--max-room-size",
        type=_positive_int,
        metavar="USERS",
        help="refuse the join when the room already has this many members",
    )

    demo = commands.add_parser(
        "demo",
        help="run a relay and N Python peers in one room, check the full mesh",
        description="Start a relay on a free loopback port, let N aiortc peers join one "
        "room, form the full mesh and exchange a message over every pair's data channel. "
        "With --nodes N > 1 the relay is N 'serve --redis' processes on a redis-server "
        "the demo starts (and stops), the peers spread over them round-robin. "
        "Exits 0 only if every pair worked.",
    )
    demo.add_argument("--peers", type=_positive_int, default=4, help="(default %(default)s)")
    demo.add_argument(
        "--nodes",
        type=_positive_int,
        default=1,
        metavar="N",
        help="relay processes; more than 1 starts a redis-server (Debian package "
        "redis-server) and N 'serve --redis' processes on it (default %(default)s: one "
        "relay in this process, no Redis)",
    )
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.add_argument("--trace", metavar="DIR", help="write relay and client traces to DIR")
    demo.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="give up after this long (default %(default)s)",
    )

    chat = commands.add_parser(
        "chat",
        help="an interactive peer: stdin lines go to every peer, messages go to stdout",
        description="Join ROOM on the relay at URL as USER. Each line read from stdin is "
        "sent to every connected peer over its data channel; every message received is "
        "printed as 'FROM: TEXT'; membership and connection events go to stderr. Exits "
        "on end of input or Ctrl-C.",
    )
    chat.add_argument(
        "url", nargs="?", default="ws://127.0.0.1:8765/", help="the relay (default %(default)s)"
    )
    chat.add_argument("--room", required=True)
    chat.add_argument("--user", required=True)
    chat.add_argument(
        "--ice-server",
        action="append",
        default=[],
        type=parse_ice_server,
        metavar="URL[,username=NAME,credential=SECRET]",
        help="a STUN/TURN server (TURN with its credentials), repeatable (default: the "
        "ones the relay hands out at its /config.json, fetched before each connection: "
        "serve's --ice-server, and fresh TURN credentials with serve --turn-url)",
    )
    chat.add_argument("--trace", metavar="FILE", help="write the client trace to FILE")
    chat_token = chat.add_mutually_exclusive_group()
    chat_token.add_argument("--token", help="a join token, for a server started with --secret-file")
    chat_token.add_argument(
        "--token-file", metavar="PATH", help="read the join token from PATH (keeps it off ps)"
    )
    chat.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="INFO shows the negotiation step by step (Creating offer for peer: ..., "
        "Sending offer to: ..., WAITING for WebRTC KEY from: ..., Received answer from: ..., "
        "Connection established with: ...); default %(default)s",
    )
    chat.add_argument(
        "--loopback-only",
        action="store_true",
        help="use only 127.0.0.1 for ICE (peers on this machine)",
    )

    diagnose = commands.add_parser(
        "diagnose",
        help="read client and relay traces; say where each pair stopped",
        description="Read traces written with --trace (clients and relay) and print, per "
        "pair, whether it connected and, if not, the step where it stopped and the likely "
        "cause. Exits 0 when every pair connected (or, from the relay's trace alone, finished "
        "signaling), 1 otherwise.",
    )
    diagnose.add_argument(
        "traces", nargs="+", metavar="TRACE", help="a trace file, or a directory of *.jsonl traces"
    )
    diagnose.add_argument("--json", action="store_true", help="print the report as JSON")
    diagnose.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="under each pair, its timeline from all traces merged",
    )
    return parser


def limits_from_args(args: argparse.Namespace) -> Limits:
    """The :class:`Limits` the flags describe."""
    return Limits(
        max_frame_bytes=args.max_frame_bytes,
        max_room_size=args.max_room_size,
        max_rooms=args.max_rooms,
        max_text_chars=args.max_text_chars,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        abuse_errors=args.abuse_errors,
        abuse_window=args.abuse_window,
        idle_timeout=args.idle_timeout,
        resume_grace=args.resume_grace,
        resume_queue_frames=args.resume_queue_frames,
        resume_queue_bytes=args.resume_queue_bytes,
        node_timeout=args.node_timeout,
    )


async def run_serve(
    args: argparse.Namespace, out: TextIO = sys.stdout, log_lines: LogLines | None = None
) -> None:
    """Run ``serve`` until SIGINT (clients closed with 1001, going away) or SIGTERM
    (1012, service restart: clients reconnect and resume)."""
    with contextlib.ExitStack() as stack:
        trace = stack.enter_context(open(args.trace, "w", encoding="utf-8")) if args.trace else None
        limits = limits_from_args(args)
        secret = read_secret(args.secret_file)
        store = open_store(args.redis, limits)
        node = incarnation(args.node_id or secrets.token_hex(4)) if store is not None else None
        machine = None
        log = logging.getLogger("sansio_signal.relay")
        if secret is None:
            log.warning("No --secret-file: the server is open, anyone may join any room")
        else:
            authority = TokenAuthority(secret)
            machine = RelayMachine(
                limits=limits,
                directory=MemoryDirectory(),
                authorize=authority,
                new_token=lambda: secrets.token_urlsafe(18),
                node=node,
            )
            authority.room_size = machine.room_size  # a token's max, on one process or many
            log.info("Joins need a token signed with the configured secret")
        server = RelayServer(
            host=args.host,
            port=args.port,
            limits=limits,
            send_buffer=args.send_buffer,
            trace=trace,
            machine=machine,
            ice_servers=args.ice_server,
            max_connections_per_ip=args.max_connections_per_ip,
            allowed_origins=args.allowed_origin,
            open_timeout=args.handshake_timeout,
            ping_interval=args.ping_interval,
            ping_timeout=args.ping_timeout,
            log_lines=log_lines,
            store=store,
            node_id=args.node_id if store is not None else None,
            turn=turn_config(args),
        )
        signals: list[int] = []
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            signals.append(signum)
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        await server.start()
        code = CloseCode.GOING_AWAY
        try:
            print(f"listening on {server.url}", file=out, flush=True)
            await stop.wait()
            if signals[0] == signal.SIGTERM:
                code = SERVICE_RESTART
                log.info("SIGTERM: restarting (1012 to every client, they come back)")
            else:
                log.info("Shutting down (1001 to every client)")
        finally:
            await server.stop(code, "restarting" if code == SERVICE_RESTART else "")


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop where it is installed (a dependency everywhere but on
    Windows: a faster event loop, in C), else on asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        asyncio.run(main)
        return
    uvloop.run(main)


SECRET_ENV = "SANSIO_SIGNAL_SECRET"


def turn_config(args: argparse.Namespace) -> TurnConfig | None:
    """The TURN servers of ``--turn-url`` / ``--turn-secret-file`` (both or neither)."""
    if not args.turn_url and args.turn_secret_file is None:
        return None
    if not args.turn_url or args.turn_secret_file is None:
        raise ValueError("--turn-url and --turn-secret-file go together")
    secret = load_turn_secret(Path(args.turn_secret_file).read_bytes())
    return TurnConfig(urls=tuple(args.turn_url), secret=secret, ttl=args.turn_ttl)


def open_store(url: str | None, limits: Limits) -> RedisStore | None:
    """The shared store of ``--redis URL`` (``None`` without one); a mailbox holds what
    a resume queue would (``--resume-queue-frames``)."""
    if url is None:
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"--redis wants a redis:// or rediss:// URL, got {url!r}")
    try:
        from .redis_store import RedisStore
    except ImportError as exc:  # redis-py is the optional 'redis' extra
        raise ValueError(
            f"--redis needs redis-py ({exc}); install it with: pip install 'sansio-signal[redis]'"
        ) from None
    return RedisStore.from_url(
        url, timeout=limits.node_timeout, mailbox_cap=limits.resume_queue_frames
    )


def read_secret(path: str | None) -> bytes | None:
    """The secret from ``--secret-file``, else from the environment, else ``None``."""
    if path is not None:
        return load_secret(Path(path).read_bytes())
    value = os.environ.get(SECRET_ENV)
    return None if value is None else load_secret(value.encode("utf-8"))


def run_diagnose(
    paths: Sequence[str], out: TextIO = sys.stdout, *, as_json: bool = False, verbose: bool = False
) -> int:
    """``sansio-signal diagnose``: one line per pair (with ``verbose``, each pair's
    timeline under it; with ``as_json``, the whole report as JSON); 0 when every pair
    connected, 1 otherwise."""
    traces: dict[str, list[dict[str, object]]] = {}
    for name in paths:
        path = Path(name)
        files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
        for file in files:
            records = traces.setdefault(str(file), [])
            with file.open(encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        records.append(json.loads(line))
                    except ValueError:  # a killed process may leave half a line
                        print(f"{file}:{number}: not a JSON line, skipped", file=sys.stderr)
    report = diagnose(traces)
    if as_json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False), file=out)
        return 0 if report.ok else 1
    if not report.findings:
        print("no user found in the traces", file=out)
        return 1
    if verbose:
        for trace in report.traces:
            print(trace.line(), file=out)
    for finding in report.findings:
        print(finding.line(), file=out)
        if verbose:
            for event in finding.timeline:
                print("    " + event.line(), file=out)
    return 0 if report.ok else 1


_RTC_MODULES = frozenset({"aiortc", "aioice", "av", "pylibsrtp"})
"""Top-level modules of the ``rtc`` extra: aiortc and its native libraries."""


def _without_rtc(command: str, exc: ModuleNotFoundError) -> int:
    """Exit status 2 and one line naming the extra, for ``chat``/``demo`` without aiortc."""
    if (exc.name or "").split(".")[0] not in _RTC_MODULES:
        raise exc
    print(
        f"sansio-signal {command}: needs aiortc (no module named {exc.name!r}); "
        "install it with: pip install 'sansio-signal[rtc]'",
        file=sys.stderr,
    )
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sansio-signal`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        if args.redis and not args.node_id:
            args.node_id = secrets.token_hex(4)  # one name for the logs and the cluster
        lines = LogLines(sys.stderr, tag=args.node_id if args.redis else "")
        logging.basicConfig(level=args.log_level, handlers=[lines])
        try:
            run_loop(run_serve(args, log_lines=lines))
        except ValueError as exc:  # an empty secret
            print(f"sansio-signal serve: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:  # port in use, bad address, unreadable secret file
            print(f"sansio-signal serve: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "demo":
        if args.peers < 2:
            print("sansio-signal demo: --peers must be at least 2", file=sys.stderr)
            return 2
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        try:
            from .demo import main_demo  # aiortc is needed for this command only
        except ModuleNotFoundError as exc:
            return _without_rtc("demo", exc)
        return main_demo(args.peers, args.json, args.trace, args.timeout, nodes=args.nodes)
    if args.command == "token":
        try:
            secret = load_secret(Path(args.secret_file).read_bytes())
        except (OSError, ValueError) as exc:
            print(f"sansio-signal token: {exc}", file=sys.stderr)
            return 1
        print(
            issue_token(
                secret,
                user_id=args.user,
                room=args.room,
                ttl=args.ttl,
                wall_time=time.time(),
                max_room_size=args.max_room_size,
            )
        )
        return 0
    if args.command == "diagnose":
        return run_diagnose(args.traces, as_json=args.json, verbose=args.verbose)
    if args.command == "chat":
        logging.basicConfig(
            level=args.log_level, stream=sys.stderr, format=f"[{args.user}] %(message)s"
        )
        token = args.token
        if args.token_file is not None:
            try:
                token = Path(args.token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                print(f"sansio-signal chat: cannot read {args.token_file}: {exc}", file=sys.stderr)
                return 1
        try:
            from .chat import main_chat  # aiortc is needed for this command only
        except ModuleNotFoundError as exc:
            return _without_rtc("chat", exc)
        return main_chat(
            args.url,
            args.room,
            args.user,
            args.ice_server,
            args.trace,
            args.loopback_only,
            token=token,
        )
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse prevents this
