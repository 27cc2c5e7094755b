"""The ``sansio-signal`` command.

``sansio-signal serve`` runs the relay server until SIGINT or SIGTERM, after printing
one line ``listening on ws://HOST:PORT/`` to stdout. ``sansio-signal demo`` runs a relay
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
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from sansio_signal import Limits, MemoryDirectory, RelayMachine, __version__
from sansio_signal.diagnose import diagnose
from sansio_signal.tokens import TokenAuthority, issue_token, load_secret

from .server import DEFAULT_SEND_BUFFER, RelayServer

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
        description="Run the relay server until SIGINT/SIGTERM.",
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
        "--send-buffer",
        type=_positive_int,
        default=DEFAULT_SEND_BUFFER,
        metavar="BYTES",
        help="bytes queued for one client before it is closed as a slow "
        "consumer with 1013 (default %(default)s)",
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
    token.add_argument("--ttl", type=_positive_float, required=True, metavar="SECONDS")
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
        "Exits 0 only if every pair worked.",
    )
    demo.add_argument("--peers", type=_positive_int, default=4, help="(default %(default)s)")
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
        metavar="URL",
        help="a STUN/TURN server, repeatable (default: none)",
    )
    chat.add_argument("--trace", metavar="FILE", help="write the client trace to FILE")
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
        "cause. Exits 0 when every pair connected, 1 otherwise.",
    )
    diagnose.add_argument(
        "traces", nargs="+", metavar="TRACE", help="a trace file, or a directory of *.jsonl traces"
    )
    return parser


def limits_from_args(args: argparse.Namespace) -> Limits:
    """The :class:`Limits` the flags describe."""
    return Limits(
        max_frame_bytes=args.max_frame_bytes,
        max_room_size=args.max_room_size,
        max_text_chars=args.max_text_chars,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        abuse_errors=args.abuse_errors,
        abuse_window=args.abuse_window,
    )


async def run_serve(args: argparse.Namespace, out: TextIO = sys.stdout) -> None:
    """Run ``serve`` until SIGINT or SIGTERM."""
    with contextlib.ExitStack() as stack:
        trace = stack.enter_context(open(args.trace, "w", encoding="utf-8")) if args.trace else None
        limits = limits_from_args(args)
        secret = read_secret(args.secret_file)
        machine = None
        log = logging.getLogger("sansio_signal.relay")
        if secret is None:
            log.warning("No --secret-file: the server is open, anyone may join any room")
        else:
            directory = MemoryDirectory()
            machine = RelayMachine(
                limits=limits,
                directory=directory,
                authorize=TokenAuthority(secret, room_size=directory.size),
                new_token=lambda: secrets.token_urlsafe(18),
            )
            log.info("Joins need a token signed with the configured secret")
        server = RelayServer(
            host=args.host,
            port=args.port,
            limits=limits,
            send_buffer=args.send_buffer,
            trace=trace,
            machine=machine,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with server:
            print(f"listening on {server.url}", file=out, flush=True)
            await stop.wait()
            logging.getLogger("sansio_signal.relay").info("Shutting down (1001 to every client)")


SECRET_ENV = "SANSIO_SIGNAL_SECRET"


def read_secret(path: str | None) -> bytes | None:
    """The secret from ``--secret-file``, else from the environment, else ``None``."""
    if path is not None:
        return load_secret(Path(path).read_bytes())
    value = os.environ.get(SECRET_ENV)
    return None if value is None else load_secret(value.encode("utf-8"))


def run_diagnose(paths: Sequence[str], out: TextIO = sys.stdout) -> int:
    """``sansio-signal diagnose``: findings per pair; 0 when every pair connected."""
    records: list[dict[str, object]] = []
    for name in paths:
        path = Path(name)
        files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
        for file in files:
            with file.open(encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        records.append(json.loads(line))
                    except ValueError:
                        print(f"{file}:{number}: not a JSON line, skipped", file=sys.stderr)
    findings = diagnose(records)
    if not findings:
        print("no pair of users found in the traces", file=out)
        return 1
    for finding in findings:
        print(finding.line(), file=out)
    return 0 if all(f.connected for f in findings) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sansio-signal`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        logging.basicConfig(
            level=args.log_level,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        # websockets logs every HTTP request at INFO; keep it for --log-level DEBUG only.
        if args.log_level != "DEBUG":
            logging.getLogger("websockets").setLevel(logging.WARNING)
        try:
            asyncio.run(run_serve(args))
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
        from .demo import main_demo  # aiortc is needed for this command only

        return main_demo(args.peers, args.json, args.trace, args.timeout)
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
                now=time.time(),
                max_room_size=args.max_room_size,
            )
        )
        return 0
    if args.command == "diagnose":
        return run_diagnose(args.traces)
    if args.command == "chat":
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        from .chat import main_chat  # aiortc is needed for this command only

        return main_chat(
            args.url, args.room, args.user, args.ice_server, args.trace, args.loopback_only
        )
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse prevents this
