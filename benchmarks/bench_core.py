"""Cost of relaying one signaling frame inside :class:`RelayMachine`, against plain JSON.

What is measured
----------------
A machine with ``Limits(rate_limit=0)`` holds one room with two joined connections,
``a`` (``alice``) and ``b`` (``bob``). The measured call is exactly what the server
adapter does for each frame it reads::

    machine.handle(FrameReceived(conn=a, data=text), now)

(the event object is built once outside the loop; building it costs well under 1 µs and is
shown in the breakdown). Each call decodes and validates the frame, routes it and makes
the relayed frame for ``b`` — the sender's text with its closing brace replaced by
``alice``'s stamp (``,"fromUserId":"alice","roomId":"demo"}``); it returns the
``SendFrame`` and ``Log`` actions.

Target (issue 13): the ``webrtc-ice`` frame costs at most 3 µs (``TARGETS_US``); the
offer has no target of its own. For scale, the table also shows what a relay that
re-encodes the frame would spend on JSON alone: ``json.dumps(json.loads(text))`` on the
same text (the ``json µs`` column; the machine did just that until issue 13).

Figures on the development machine (Python 3.11, a shared 2-core box; best of 40):

=============  ===========================  ==================  ==============
frame          before issue 13 (9a22f7c)    now                 json µs
=============  ===========================  ==================  ==============
webrtc-ice     9.0 µs                       2.7 µs              5.2 µs
webrtc-offer   17.9 µs                      4.4 µs              13.9 µs
=============  ===========================  ==================  ==============

One step at a time (ICE, offer): msgspec decodes, the stdlib decoder only deciding
what msgspec refuses (7.7, 15.9 µs); the relayed text is spliced rather than encoded
(4.7, 7.7 µs); fewer Python calls on the path (2.7, 5.4 µs); msgspec bounds the depth
itself, where a Python walk measured it (2.7, 4.4 µs). The breakdown (``--profile``)
measures each step of the path alone; the rest is the machine's own code between them
and freeing the decoded frame.

Two frames: a realistic ``webrtc-ice`` (a Chrome-style srflx candidate with ``sdpMid``,
``sdpMLineIndex``, ``usernameFragment`` and an ``epoch``, 313 bytes) and a realistic
``webrtc-offer`` (audio + video + data channel, a 2.8 KB SDP; 3.1 KB frame).

Timing is ``timeit``-style: each figure is ``timeit.Timer.repeat`` with ``number``
chosen so one repeat lasts about ``--target-ms``; the table shows the best repeat
(the usual low-noise estimator) and the JSON output also has the median.

Run ``python benchmarks/bench_core.py`` (``--json`` for one JSON object on stdout,
``--profile`` to always print the breakdown and a cProfile of the machine call).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sansio_signal import (
    Connected,
    FrameReceived,
    Limits,
    RelayMachine,
    SendFrame,
)
from sansio_signal.actions import send_frame
from sansio_signal.testing import counting_tokens
from sansio_signal.wire import (
    _fast_decode,
    check_signal,
    client_envelope,
    decode_object,
    dumps,
    signal_stamp,
)

if not __package__:  # run as a script: benchmarks/ is on sys.path, the project root is not
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import ICE_CANDIDATE, print_table, profile_table

TARGETS_US = {"webrtc-ice": 3.0}
"""µs per machine call (best repeat), by frame; a frame not here has no target."""
NOW = 1_000.0
A, B = 1, 2

ICE_FRAME: dict[str, Any] = {
    "channel": "webrtc-signaling",
    "type": "webrtc-ice",
    "toUserId": "bob",
    "candidate": ICE_CANDIDATE,
    "epoch": 1,
}

_SDP_LINES = [
    "v=0",
    "o=- 4215775240449113834 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1 2",
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS 5d8e1c4b-0f3a-4a52-9c1e-2f7f3c9b6a11",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:7Xq2",
    "a=ice-pwd:Jq8fK2x9LmN4pR7sT1vW3yZ6",
    "a=ice-options:trickle",
    "a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:"
    "3B:6F:2D:9A:1C:8E:70:45:D2:AA:13:F0",
    "a=setup:actpass",
    "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=sendrecv",
    "a=msid:5d8e1c4b-0f3a-4a52-9c1e-2f7f3c9b6a11 0b5c7e2a-6d41-4f0e-8a3b-91c2d4e5f607",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2",
    "a=fmtp:63 111/111",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:13 CN/8000",
    "a=rtpmap:110 telephone-event/48000",
    "a=rtpmap:126 telephone-event/8000",
    "a=ssrc:2829371722 cname:Vq1cX3lN9kR2mT8w",
    "a=ssrc:2829371722 msid:5d8e1c4b-0f3a-4a52-9c1e-2f7f3c9b6a11 "
    "0b5c7e2a-6d41-4f0e-8a3b-91c2d4e5f607",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:7Xq2",
    "a=ice-pwd:Jq8fK2x9LmN4pR7sT1vW3yZ6",
    "a=ice-options:trickle",
    "a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:"
    "3B:6F:2D:9A:1C:8E:70:45:D2:AA:13:F0",
    "a=setup:actpass",
    "a=mid:1",
    "a=extmap:14 urn:ietf:params:rtp-hdrext:toffset",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:13 urn:3gpp:video-orientation",
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=sendrecv",
    "a=msid:5d8e1c4b-0f3a-4a52-9c1e-2f7f3c9b6a11 c3a9e0f1-7b2d-4e6c-9f18-3d5a6b7c8e90",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:96 VP8/90000",
    "a=rtcp-fb:96 goog-remb",
    "a=rtcp-fb:96 transport-cc",
    "a=rtcp-fb:96 ccm fir",
    "a=rtcp-fb:96 nack",
    "a=rtcp-fb:96 nack pli",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
    "a=rtpmap:98 H264/90000",
    "a=rtcp-fb:98 nack pli",
    "a=fmtp:98 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
    "a=rtpmap:99 rtx/90000",
    "a=fmtp:99 apt=98",
    "a=ssrc-group:FID 1914528306 3187391290",
    "a=ssrc:1914528306 cname:Vq1cX3lN9kR2mT8w",
    "a=ssrc:3187391290 cname:Vq1cX3lN9kR2mT8w",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "c=IN IP4 0.0.0.0",
    "a=ice-ufrag:7Xq2",
    "a=ice-pwd:Jq8fK2x9LmN4pR7sT1vW3yZ6",
    "a=ice-options:trickle",
    "a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:"
    "3B:6F:2D:9A:1C:8E:70:45:D2:AA:13:F0",
    "a=setup:actpass",
    "a=mid:2",
    "a=sctp-port:5000",
    "a=max-message-size:262144",
]

OFFER_FRAME: dict[str, Any] = {
    "channel": "webrtc-signaling",
    "type": "webrtc-offer",
    "toUserId": "bob",
    "offer": {"type": "offer", "sdp": "\r\n".join(_SDP_LINES) + "\r\n"},
    "epoch": 1,
}

FRAMES: dict[str, dict[str, Any]] = {"webrtc-ice": ICE_FRAME, "webrtc-offer": OFFER_FRAME}


def new_machine() -> RelayMachine:
    """A machine with rate limiting off and ``alice`` (conn 1), ``bob`` (conn 2) in ``demo``."""
    machine = RelayMachine(limits=Limits(rate_limit=0), new_token=counting_tokens())
    for conn, user in ((A, "alice"), (B, "bob")):
        machine.handle(Connected(conn=conn), NOW)
        join = {
            "channel": "webrtc-dashboard-rooms",
            "type": "join-room",
            "roomId": "demo",
            "userId": user,
        }
        machine.handle(FrameReceived(conn=conn, data=json.dumps(join)), NOW)
    if machine.member(A) != ("demo", "alice") or machine.member(B) != ("demo", "bob"):
        raise RuntimeError("setup failed: the two connections did not join")
    return machine


def relayed_text(machine: RelayMachine, text: str) -> str:
    """Feed ``text`` once and return the one frame relayed to ``bob`` (checks the relay)."""
    actions = machine.handle(FrameReceived(conn=A, data=text), NOW)
    sends = [a for a in actions if isinstance(a, SendFrame)]
    if len(sends) != 1 or sends[0].conn != B:
        raise RuntimeError(f"expected one frame relayed to bob, got {actions!r}")
    relayed = json.loads(sends[0].text)
    expected = {**json.loads(text), "fromUserId": "alice", "roomId": "demo"}
    if relayed != expected:
        raise RuntimeError(f"relayed frame differs from the input: {relayed!r}")
    return sends[0].text


class Measure:
    """``timeit``-style measurement, calibrated to ``target_s`` per repeat.

    The statements of one frame are measured *interleaved* (repeat 1 of each, then
    repeat 2 of each, ...) so that the machine and its baseline see the same background
    load: on a shared 2-core box the noise drifts over seconds, and a ratio of figures
    taken at different moments would carry it.
    """

    def __init__(self, repeat: int, target_s: float, timer: Callable[[], float]) -> None:
        self.repeat = repeat
        self.target_s = target_s
        self.timer = timer

    def _number(self, timer: timeit.Timer) -> int:
        number = 1
        while True:  # grow ``number`` until one run takes >= 10 ms, then scale to target
            took = timer.timeit(number)
            if took >= 0.01:
                return max(1, int(number * self.target_s / took))
            number *= 10 if took < 0.001 else 2

    def __call__(
        self, stmts: dict[str, str], namespace: dict[str, Any]
    ) -> dict[str, dict[str, float]]:
        """µs per call of each statement: ``best`` and ``median`` over the repeats."""
        timers = {
            name: timeit.Timer(stmt, timer=self.timer, globals=namespace)
            for name, stmt in stmts.items()
        }
        numbers = {name: self._number(timer) for name, timer in timers.items()}
        per_call: dict[str, list[float]] = {name: [] for name in stmts}
        for _ in range(self.repeat):
            for name, timer in timers.items():
                per_call[name].append(timer.timeit(numbers[name]) / numbers[name] * 1e6)
        return {
            name: {"best": min(v), "median": statistics.median(v), "number": numbers[name]}
            for name, v in per_call.items()
        }


def bench_frame(name: str, frame: dict[str, Any], measure: Measure) -> dict[str, Any]:
    """Machine and baseline figures for one frame, plus a breakdown of the machine's time."""
    text = json.dumps(frame, separators=(",", ":"))
    machine = new_machine()
    out_text = relayed_text(machine, text)
    limits = machine.limits
    obj = decode_object(text)
    ns: dict[str, Any] = {
        "handle": machine.handle,
        "event": FrameReceived(conn=A, data=text),
        "now": NOW,
        "text": text,
        "loads": json.loads,
        "dumps": json.dumps,
        "wire_dumps": dumps,
        "fast_decode": _fast_decode,
        "decode_object": decode_object,
        "client_envelope": client_envelope,
        "check_signal": check_signal,
        "send_frame": send_frame,
        "lookup": machine.directory.lookup,
        "obj": obj,
        "type_": frame["type"],
        "stamp": signal_stamp("alice", "demo"),
        "limits": limits,
        "relayed_obj": json.loads(out_text),
        "FrameReceived": FrameReceived,
        "A": A,
        "B": B,
    }
    # Where the machine's time goes: the steps of its path, each measured alone (their
    # sum leaves the rest: the machine's own code between them, and freeing the frame).
    steps = {
        "wire.decode_object": "decode_object(text)",
        "wire.client_envelope": "client_envelope(obj)",
        "wire.check_signal": "check_signal(obj, type_, limits)",
        "directory.lookup": "lookup('demo', 'bob')",
        "splice (text[:-1] + stamp)": "text[:-1] + stamp",
        "actions.send_frame": "send_frame(B, text, type_)",
    }
    # For scale, off the machine's path.
    others = {
        "msgspec decode (inside decode_object)": "fast_decode(text)",
        "json.loads (stdlib)": "loads(text)",
        "json.dumps (stdlib, relayed dict)": "dumps(relayed_obj)",
        "wire.dumps (relayed dict)": "wire_dumps(relayed_obj)",
        "FrameReceived(...) (adapter)": "FrameReceived(conn=A, data=text)",
    }
    figures = measure(
        {"machine": "handle(event, now)", "baseline": "dumps(loads(text))", **steps, **others},
        ns,
    )
    machine_us, baseline_us = figures["machine"], figures["baseline"]
    breakdown = {k: figures[k]["best"] for k in {**steps, **others}}
    ratio = machine_us["best"] / baseline_us["best"]
    target = TARGETS_US.get(name)
    return {
        "frame": name,
        "bytes_in": len(text.encode()),
        "bytes_out": len(out_text.encode()),
        "machine_us": machine_us,
        "json_round_trip_us": baseline_us,
        "ratio": ratio,
        "ratio_median": machine_us["median"] / baseline_us["median"],
        "target_us": target,
        "target_met": target is None or machine_us["best"] <= target,
        "breakdown_us": breakdown,
        "path_steps": list(steps),
        "rest_of_machine_us": machine_us["best"] - sum(breakdown[k] for k in steps),
    }


def profile_machine(frame: dict[str, Any], calls: int = 20_000, top: int = 14) -> str:
    """cProfile of ``calls`` machine calls, top functions by own time (cProfile inflates
    call-heavy code; read it as shares, not absolute times)."""
    text = json.dumps(frame, separators=(",", ":"))
    machine = new_machine()
    event = FrameReceived(conn=A, data=text)
    handle = machine.handle
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        handle(event, NOW)
    profiler.disable()
    return profile_table(profiler, top)


def print_results(results: list[dict[str, Any]]) -> None:
    print_table(
        ["frame", "bytes", "machine µs", "json µs", "ratio", "target"],
        [
            [
                r["frame"],
                r["bytes_in"],
                f"{r['machine_us']['best']:.2f}",
                f"{r['json_round_trip_us']['best']:.2f}",
                f"{r['ratio']:.2f}x",
                _target_cell(r),
            ]
            for r in results
        ],
        align="<>>>><",
    )
    print(
        "machine: RelayMachine.handle(FrameReceived) = validate, route, stamp (splice)\n"
        "json:    json.dumps(json.loads(text)), for scale; µs per frame, best repeat"
    )


def _target_cell(result: dict[str, Any]) -> str:
    target = result["target_us"]
    if target is None:
        return "-"
    return f"ok (<= {target:g} µs)" if result["target_met"] else f"MISSED (> {target:g} µs)"


def print_breakdown(result: dict[str, Any]) -> None:
    print(f"\nwhere the time goes — {result['frame']} (best, µs per call):")
    machine_best = result["machine_us"]["best"]
    steps = result["path_steps"]
    rows = [
        [name, f"{value:.2f}", f"{value / machine_best:.1%}", "step" if name in steps else ""]
        for name, value in result["breakdown_us"].items()
    ]
    rest = result["rest_of_machine_us"]
    note = "= machine - the steps"
    rows.append(
        ["rest (calls, routing, stats, free)", f"{rest:.2f}", f"{rest / machine_best:.1%}", note]
    )
    print_table(["piece", "µs", "of machine", ""], rows, align="<>><", indent="  ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--repeat", type=int, default=40, help="repeats per figure (default 40)")
    parser.add_argument(
        "--target-ms", type=float, default=5.0, help="duration of one repeat in ms (default 5)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="always print the breakdown and a cProfile of the machine call",
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with process CPU time (time.process_time) instead of time.perf_counter: "
        "steadier on a machine busy with other work",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.target_ms <= 0:
        parser.error("--repeat must be >= 1 and --target-ms > 0")

    timer_name = "process_time" if args.cpu_time else "perf_counter"
    timer = time.process_time if args.cpu_time else time.perf_counter
    measure = Measure(repeat=args.repeat, target_s=args.target_ms / 1000, timer=timer)
    results = [bench_frame(name, frame, measure) for name, frame in FRAMES.items()]
    missed = [r for r in results if not r["target_met"]]
    profiles = {
        r["frame"]: profile_machine(FRAMES[r["frame"]])
        for r in results
        if args.profile or not r["target_met"]
    }
    if args.json:
        print(
            json.dumps(
                {
                    "benchmark": "core",
                    "python": platform.python_version(),
                    "implementation": platform.python_implementation(),
                    "timer": timer_name,
                    "repeat": args.repeat,
                    "target_ms": args.target_ms,
                    "targets_us": TARGETS_US,
                    "results": results,
                    "target_met": not missed,
                    "profiles": profiles,
                },
                indent=2,
            )
        )
        return 0
    print(
        f"sansio-signal core relay cost — Python {platform.python_version()} "
        f"({sys.platform}), timer {timer_name}, best of {args.repeat} × ~{args.target_ms:g} ms\n"
    )
    print_results(results)
    for r in results:
        if args.profile or not r["target_met"]:
            print_breakdown(r)
    for name, text in profiles.items():
        print(f"\ncProfile, {name}, machine.handle × 20000, by own time:\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
