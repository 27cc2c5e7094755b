"""``sansio-signal diagnose`` on the traces of real runs that fail in known ways.

Each run (tests/diagnose_runs.py) goes through a real relay on loopback with real aiortc
peers and breaks in one place — a proxy dropping or rewriting frames, a raw client that
never answers, a kill, a limit. The diagnosis must name the pair and that place, from
all the traces and from the subsets an operator may have (one side's, the relay's).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from diagnose_runs import RUNS, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sansio_signal.adapters.cli import main, run_diagnose
from sansio_signal.diagnose import diagnose as diagnose_traces

Diagnose = Callable[..., tuple[int, str]]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``ran(run_name)``: the directory of that scenario's traces, run once per module
    (the guide's test reads them all)."""
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            where = tmp_path_factory.mktemp(name)
            run(name, where)
            done[name] = where  # only once it ran to its end
        return done[name]

    return get


@pytest.fixture
def traces(ran: Callable[[str], Path]) -> Callable[[str], Diagnose]:
    """``traces(run_name)`` runs that scenario and returns ``diagnose(*names)``, which
    reads only the named traces (all of them when none are named)."""

    def start(name: str) -> Diagnose:
        where = ran(name)

        def diagnose(*names: str, **flags: bool) -> tuple[int, str]:
            files = [where / f"{n}.jsonl" for n in names] or [where]
            out = io.StringIO()
            status = run_diagnose([str(f) for f in files], out, **flags)
            return status, out.getvalue()

        return diagnose

    return start


def only_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


def stopped(diagnose: Diagnose, *names: str) -> str:
    """The one line ``diagnose`` prints for these traces; it must exit 1."""
    status, text = diagnose(*names)
    assert status == 1, text
    return only_line(text)


def test_a_healthy_mesh_exits_0(traces: Callable[[str], Diagnose]) -> None:
    diagnose = traces("healthy")
    assert diagnose() == (
        0,
        "alice ↔ bob: connected (over a host pair)\n"
        "alice ↔ carol: connected (over a host pair)\n"
        "bob ↔ carol: connected (over a host pair)\n",
    )
    status, text = diagnose("relay")
    assert status == 0
    assert text.count(": signaled (offer and answer relayed by +") == 3, text
    status, text = diagnose("alice")
    assert status == 0
    assert "alice ↔ bob: connected (from alice's side; over a host pair)" in text


def test_the_target_never_joined_a_room_typo(traces: Callable[[str], Diagnose]) -> None:
    diagnose = traces("room-typo")
    expected = (
        "alice ↔ bob: stopped at room: the target never joined the room: "
        "alice joined 'demo', bob joined 'dmeo'"
    )
    assert diagnose() == (1, expected + "\n")
    assert diagnose("relay") == (1, expected + " (no trace from alice or bob)\n")
    assert diagnose("alice") == (
        1,
        "alice: stopped at room: nobody else was in room 'demo' with alice\n",
    )


@pytest.mark.parametrize(
    ("name", "refused", "code"),
    [("user-id-taken", "bob", "user-id-taken"), ("unauthorized", "bob", "unauthorized")],
)
def test_a_refused_join_is_named(
    traces: Callable[[str], Diagnose], name: str, refused: str, code: str
) -> None:
    diagnose = traces(name)
    for subset in ((), ("relay",), ("alice", "bob")):
        status, text = diagnose(*subset)
        assert status == 1
        assert only_line(text).startswith(
            f"alice ↔ bob: stopped at join: {refused}'s join was refused by the server at +"
        ), (subset, text)
        assert f": {code} (" in text
    status, text = diagnose("bob")
    assert only_line(text).startswith("bob: stopped at join: bob's join was refused")
    assert f": {code} (" in text


def test_a_full_room_refuses_the_third(traces: Callable[[str], Diagnose]) -> None:
    diagnose = traces("room-full")
    status, text = diagnose()
    assert status == 1
    lines = text.splitlines()
    assert lines[0] == "alice ↔ bob: connected (over a host pair)"
    for line, other in zip(lines[1:], ("alice", "bob"), strict=True):
        assert line.startswith(f"{other} ↔ carol: stopped at join: carol's join was refused")
        assert ": room-full (room 'demo' is full (2 members))" in line


def test_an_offer_lost_in_transit(traces: Callable[[str], Diagnose]) -> None:
    diagnose = traces("offer-lost")
    line = stopped(diagnose)
    assert line.startswith(
        "alice ↔ bob: stopped at offer relay: alice's offer never reached bob "
        "(the relay forwarded it at +"
    ), line
    assert line.endswith("lost in transit between the relay and bob (the connections stayed up)")
    # only the polite side's trace: no offer ever came
    line = stopped(diagnose, "bob")
    assert line.startswith("alice ↔ bob: stopped at offer: no offer from alice"), line
    assert line.endswith("(no trace from alice)")
    # only the relay's: it delivered the offer, nothing came back
    assert stopped(diagnose, "relay").startswith(
        "alice ↔ bob: stopped at answer: no answer from bob: alice's offer was delivered at +"
    )


def test_an_answer_lost_in_transit(traces: Callable[[str], Diagnose]) -> None:
    diagnose = traces("answer-lost")
    line = stopped(diagnose)
    assert line.startswith(
        "alice ↔ bob: stopped at answer relay: bob's answer never reached alice "
        "(the relay forwarded it at +"
    ), line
    assert "lost in transit between the relay and alice" in line
    # only the initiator's trace
    line = stopped(diagnose, "alice")
    assert line.startswith(
        "alice ↔ bob: stopped at answer: no answer from bob: alice's offer was sent at +"
    )
    assert line.endswith("nothing came back (no trace from bob)")


def test_a_silent_peer_without_a_trace(traces: Callable[[str], Diagnose]) -> None:
    diagnose = traces("silent-peer")
    status, text = diagnose()
    assert status == 1
    lines = text.splitlines()
    assert len(lines) == 3, text
    assert lines[0].startswith(
        "alice ↔ bob: stopped at answer: no answer from bob: alice's offer was delivered at +"
    )
    assert lines[0].endswith("and nothing came back (no trace from bob)")
    assert lines[1] == "alice ↔ carol: connected (over a host pair)"
    assert lines[2].startswith(
        "bob ↔ carol: stopped at offer: no offer from bob: carol waited from +"
    )
    assert "carol asked for it" in lines[2] and "the relay got none" in lines[2]
    assert lines[2].endswith("(no trace from bob)")
    # the two clients' traces without the relay's: bob is still found
    status, text = diagnose("alice", "carol")
    assert [line.split(":")[0] for line in text.splitlines()] == [
        "alice ↔ bob",
        "alice ↔ carol",
        "bob ↔ carol",
    ]


def test_candidates_stripped_in_transit(traces: Callable[[str], Diagnose]) -> None:
    diagnose = traces("candidates-stripped")
    line = stopped(diagnose)
    assert line.startswith(
        "alice ↔ bob: stopped at candidates: alice's candidates were stripped in transit "
        "between the relay and bob: alice sent 127.0.0.1:"
    ), line
    assert ", bob got none; ICE failed at +" in line
    line = stopped(diagnose, "bob")
    assert "stopped at candidates: bob got alice's offer without candidates" in line


def test_candidates_rewritten_to_a_dead_port(traces: Callable[[str], Diagnose]) -> None:
    diagnose = traces("candidates-dead-port")
    line = stopped(diagnose)
    assert line.startswith(
        "alice ↔ bob: stopped at candidates: alice's candidates were rewritten in transit "
        "between the relay and bob: alice sent 127.0.0.1:"
    ), line
    assert "; ICE failed at +" in line
    # ICE failed before both quit: the quit is not the cause
    line = stopped(diagnose, "alice")
    assert line.startswith("alice ↔ bob: stopped at ice: no usable candidate pair: ICE failed"), (
        line
    )
    assert "peer left" not in line


def test_the_peer_killed_as_the_offer_reached_it(
    traces: Callable[[str], Diagnose], ran: Callable[[str], Path]
) -> None:
    diagnose = traces("peer-killed")
    line = stopped(diagnose)
    assert line.startswith(
        "alice ↔ bob: stopped at answer relay: bob's answer never reached the relay "
        "(bob sent it at +"
    ), line
    assert "bob's trace ends at +" in line and "the process died (killed?)" in line
    assert "the relay saw its connection drop" in line
    # the killed peer's trace survived the kill: it has the offer
    killed = (ran("peer-killed") / "bob.jsonl").read_text(encoding="utf-8").splitlines()
    assert any('"webrtc-offer' in line and "ServerFrameReceived" in line for line in killed)
    line = stopped(diagnose, "alice", "relay")
    assert line.startswith(
        "alice ↔ bob: stopped at answer: no answer from bob: alice's offer was delivered at +"
    ), line
    assert "the relay saw bob's connection drop at +" in line


@pytest.mark.parametrize(
    ("name", "step", "frame"),
    [
        ("relay-killed", "answer relay", "bob's answer"),
        ("relay-killed-early", "offer relay", "alice's offer"),
    ],
)
def test_the_relay_killed_mid_negotiation(
    traces: Callable[[str], Diagnose], name: str, step: str, frame: str
) -> None:
    """Whenever in the exchange the relay dies, the relay is named (not the frame that
    was on its way, nor the peer that waited for it)."""
    diagnose = traces(name)
    sender = frame.split("'")[0]
    line = stopped(diagnose)
    assert line.startswith(
        f"alice ↔ bob: stopped at {step}: {frame} never reached the relay ({sender} sent it at +"
    ), line
    assert (
        "the relay was lost at +" in line
        and "(alice, bob: connection dropped, reconnects failed)" in line
    )
    for subset in (("alice",), ("bob",), ("alice", "bob")):
        assert "the relay was lost at +" in stopped(diagnose, *subset), subset


def test_an_oversize_frame_is_named(traces: Callable[[str], Diagnose]) -> None:
    diagnose = traces("oversize-offer")
    for subset in ((), ("alice",), ("relay",)):
        status, text = diagnose(*subset)
        assert status == 1
        assert only_line(text).startswith(
            "alice ↔ bob: stopped at offer relay: the relay refused alice's offer: "
            "frame-too-large (frame is larger than 600 bytes; the offer was "
        ), (subset, text)


def test_traces_that_disagree_are_said_to(ran: Callable[[str], Path]) -> None:
    """bob's trace shows the offer arriving, the relay's (a line lost, say) not its
    forwarding: the finding says so, and still stops where the answer did."""
    where = ran("answer-lost")
    traces = {
        f.stem: [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()]
        for f in where.glob("*.jsonl")
    }
    traces["relay"] = [
        r
        for r in traces["relay"]
        if not (r["kind"] == "SendFrame" and '"type":"webrtc-offer"' in r.get("text", ""))
    ]
    (finding,) = diagnose_traces(traces).findings
    assert (finding.pair, finding.step) == (("alice", "bob"), "answer relay")
    assert finding.cause.endswith(
        "; bob got the offer, but no trace shows the relay forwarded it: traces disagree, "
        "or one is incomplete"
    ), finding.cause


def test_json_and_the_verbose_timeline(
    traces: Callable[[str], Diagnose], ran: Callable[[str], Path]
) -> None:
    diagnose = traces("answer-lost")
    status, text = diagnose(as_json=True)
    assert status == 1
    report = json.loads(text)
    assert report["ok"] is False
    (finding,) = report["findings"]
    assert finding["pair"] == ["alice", "bob"]
    assert (finding["verdict"], finding["step"]) == ("stopped", "answer relay")
    assert finding["missing"] == []
    said = [(e["who"], e["text"]) for e in finding["timeline"]]
    assert ("alice", "Sending offer to: bob") in said
    assert ("relay", 'Relaying message type "webrtc-answer" bob → alice (epoch 0)') in said
    assert [e["at"] for e in finding["timeline"]] == sorted(e["at"] for e in finding["timeline"])
    assert {t["kind"] for t in report["traces"]} == {"client", "relay"}
    status, text = diagnose(verbose=True)
    lines = text.splitlines()
    pair = next(k for k, line in enumerate(lines) if line.startswith("alice ↔ bob: stopped at"))
    timeline = lines[pair + 1 :]
    assert timeline and all(line.startswith("    +") for line in timeline)
    assert any("bob      Received offer from: alice" in line for line in timeline), timeline
    # the console script takes the flags
    assert main(["diagnose", "--json", str(ran("answer-lost"))]) == 1


GUIDE = Path(__file__).resolve().parent.parent / "docs" / "debugging.md"


def shape(text: str) -> list[str]:
    """``text``'s lines with every number (times, ports, sizes, counts) as ``N``."""
    return [re.sub(r"\d+(\.\d+)?", "N", line) for line in text.strip().splitlines()]


def test_the_debugging_guide_shows_every_run_as_it_is(ran: Callable[[str], Path]) -> None:
    """docs/debugging.md shows the output of each run (regenerated with
    ``python tests/diagnose_runs.py DIR``), and of its trace subsets: each block is what
    ``diagnose`` says of this run's traces now, but for the numbers (timings differ from
    run to run) and, under ``-v``, the timeline (its interleaving across traces too)."""
    guide = GUIDE.read_text(encoding="utf-8")
    for name in RUNS:
        assert f"$ sansio-signal diagnose {name}/\n" in guide, name
    blocks = re.findall(r"^\$ sansio-signal diagnose (.*)\n((?:(?!\$ |```).*\n)*)", guide, re.M)
    checked = 0
    for command, shown in blocks:
        args = command.split()
        paths = [a for a in args if not a.startswith("-")]
        if not all(p.split("/")[0] in RUNS for p in paths):
            continue  # the browser's run: tests/test_diagnose_browser.py
        out = io.StringIO()
        run_diagnose(
            [str(ran(p.split("/")[0]) / p.split("/", 1)[1]) for p in paths],
            out,
            verbose="-v" in args,
        )
        said = out.getvalue()
        for p in paths:  # the guide names each trace by its path under the run's directory
            said = said.replace(str(ran(p.split("/")[0])), p.split("/")[0])
        expected, actual = shape(shown), shape(said)
        if "-v" in args:
            expected, actual = (
                [line for line in lines if not line.startswith("    +")]
                for lines in (expected, actual)
            )
        assert actual == expected, command
        checked += 1
    assert checked >= len(RUNS) + 10


LAB = Path(__file__).resolve().parent / "traces" / "lab"
NETWORKS = Path(__file__).resolve().parent.parent / "docs" / "networks.md"


def test_network_failures_recorded_in_the_lab_are_named() -> None:
    """Traces recorded in the network lab (tests/record_lab_traces.py: peers in two
    namespaces that reach each other only through TURN), read without root: no TURN
    server, a credential not made with the TURN server's secret, an expired one."""
    said = {}
    for room in ("no-turn", "turn-wrong-secret", "turn-expired"):
        out = io.StringIO()
        assert run_diagnose([str(LAB / room)], out) == 1
        said[room] = only_line(out.getvalue())
    assert (
        "no TURN server was configured to relay (ICE servers alice: none; bob: none)"
        in (said["no-turn"])
    )
    assert "candidate pairs (alice: host; bob: host) worked" in said["no-turn"]
    for room in ("turn-wrong-secret", "turn-expired"):
        assert "refused alice's and bob's credential (401 Unauthorized)" in said[room]
    assert "not expired (valid until" in said["turn-wrong-secret"]
    assert re.search(r"it had expired at .* UTC, \d+ s before it was used$", said["turn-expired"])


def test_the_networks_guide_shows_the_lab_traces_as_they_are() -> None:
    """docs/networks.md quotes diagnose on each recorded lab run: what it says now, but
    for the numbers."""
    guide = NETWORKS.read_text(encoding="utf-8")
    blocks = re.findall(r"^\$ sansio-signal diagnose (\S+)/\n(.*)\n", guide, re.M)
    assert sorted(name for name, _ in blocks) == ["no-turn", "turn-expired", "turn-wrong-secret"]
    for name, shown in blocks:
        out = io.StringIO()
        run_diagnose([str(LAB / name)], out)
        assert shape(out.getvalue()) == shape(shown), name


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def test_damaged_traces_never_crash_diagnose(ran: Callable[[str], Path]) -> None:
    """Traces are files people hand over: any field of any record of real traces —
    the lab's (gatherings, refused credentials), and a run's relay and client traces
    (routes, a killed peer) — replaced by any JSON value still gives a report, never an
    exception."""
    dirs = [LAB / room for room in ("no-turn", "turn-wrong-secret", "turn-expired")]
    dirs += [ran(name) for name in ("healthy", "peer-killed")]
    files = {d: sorted(d.glob("*.jsonl")) for d in dirs}
    _damaged(files)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def _damaged(files: dict[Path, list[Path]], data: st.DataObject) -> None:
    where = data.draw(st.sampled_from(sorted(files)))
    traces = {}
    for path in files[where]:
        lines = path.read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        for _ in range(data.draw(st.integers(0, 6))):
            record = records[data.draw(st.integers(0, len(records) - 1))]
            key = data.draw(st.sampled_from(sorted(record)))
            record[key] = data.draw(_JSON)
        traces[path.name] = records
    report = diagnose_traces(traces)
    assert report.to_json()["findings"] is not None
