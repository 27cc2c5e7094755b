"""``serve``'s log handler: the lines ``logging`` would write, one ``write`` per loop turn."""

from __future__ import annotations

import asyncio
import io
import logging
import re

import pytest

from sansio_signal.actions import Log, LogLevel
from sansio_signal.adapters.loglines import FORMAT, LogLines

LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<rest>.*)")


class Counting(io.StringIO):
    """A stream that counts its writes."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def relay_log() -> logging.Logger:
    log = logging.getLogger("test_loglines.relay")
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def rests(stream: io.StringIO) -> list[str]:
    out = []
    for line in stream.getvalue().splitlines():
        match = LINE.fullmatch(line)
        assert match is not None, line
        out.append(match["rest"])
    return out


def test_a_turns_lines_are_one_write_in_order(relay_log: logging.Logger) -> None:
    stream = Counting()
    handler = LogLines(stream)
    relay_log.addHandler(handler)

    async def main() -> None:
        relay_log.info("joined %s", "a")
        handler.line(logging.INFO, relay_log.name, 'Relaying message type "webrtc-ice"')
        relay_log.warning("slow %d", 3)
        assert stream.writes == 0  # kept until the end of this turn
        await asyncio.sleep(0)
        assert stream.writes == 1
        relay_log.info("next turn")
        await asyncio.sleep(0)
        assert stream.writes == 2

    try:
        asyncio.run(main())
    finally:
        relay_log.removeHandler(handler)
    assert rests(stream) == [
        "INFO test_loglines.relay: joined a",
        'INFO test_loglines.relay: Relaying message type "webrtc-ice"',
        "WARNING test_loglines.relay: slow 3",
        "INFO test_loglines.relay: next turn",
    ]


def test_the_line_is_what_logging_would_write(relay_log: logging.Logger) -> None:
    """Same text as a plain StreamHandler with FORMAT (the time aside), exceptions too;
    without a running loop each line is written at once."""
    ours, plain = Counting(), io.StringIO()
    handler, reference = LogLines(ours), logging.StreamHandler(plain)
    reference.setFormatter(logging.Formatter(FORMAT))
    relay_log.addHandler(handler)
    relay_log.addHandler(reference)
    try:
        relay_log.info("Message relayed to %d clients", 2)
        assert ours.writes == 1
        try:
            raise ValueError("boom")
        except ValueError:
            relay_log.exception("failed")
    finally:
        relay_log.removeHandler(handler)
        relay_log.removeHandler(reference)
    strip = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", re.M)
    assert strip.sub("", ours.getvalue()) == strip.sub("", plain.getvalue())
    assert "ValueError: boom" in ours.getvalue()


def test_a_cluster_node_is_named_in_every_line(relay_log: logging.Logger) -> None:
    stream = io.StringIO()
    handler = LogLines(stream, tag="east")
    relay_log.addHandler(handler)
    try:
        relay_log.info("via logging")
        handler.line(logging.INFO, relay_log.name, "direct")
    finally:
        relay_log.removeHandler(handler)
    assert rests(stream) == [
        "INFO test_loglines.relay [east]: via logging",
        "INFO test_loglines.relay [east]: direct",
    ]


def test_a_machines_log_action_reads_as_its_text_every_time(relay_log: logging.Logger) -> None:
    """action_line keeps the text of an action it saw; a new action with other
    arguments is never mistaken for it (even at a reused id)."""
    stream = io.StringIO()
    handler = LogLines(stream)
    message = "Message relayed to %d clients"
    for n in (1, 1, 2, 3):
        handler.action_line(Log(level=LogLevel.INFO, message=message, args=(n,)), "relay")
    constant = Log(level=LogLevel.WARNING, message="slow %s", args=("x",))
    handler.action_line(constant, "relay")
    handler.action_line(constant, "relay")
    handler.flush()
    assert rests(stream) == [
        "INFO relay: Message relayed to 1 clients",
        "INFO relay: Message relayed to 1 clients",
        "INFO relay: Message relayed to 2 clients",
        "INFO relay: Message relayed to 3 clients",
        "WARNING relay: slow x",
        "WARNING relay: slow x",
    ]
