"""``serve``'s log output: one line per record, written once per turn of the event loop.

A relay at INFO logs a line per relayed frame (the seed's ``Relaying message type ...``).
Through :mod:`logging` each costs a ``LogRecord``, a ``Formatter`` pass (``strftime`` per
record) and a ``write`` + ``flush`` system call: ~11 µs measured here, more than relaying
the frame costs (7–9 µs of server CPU). :class:`LogLines` is a
:class:`logging.Handler` that writes the same text (``TIME LEVEL LOGGER: MESSAGE``, the
format ``serve`` has always used) but

- keeps the lines of one turn of the event loop and writes them with one ``write`` at
  its end (at once when no loop runs, and on :meth:`flush`, which ``logging.shutdown``
  calls at exit);
- formats the time once per millisecond (the date part once per second);
- takes lines directly (:meth:`line`, :meth:`action_line`): the relay server hands it
  each per-frame line without building a ``LogRecord`` (``RelayServer(log_lines=...)``),
  when its logger is enabled for the level — the same decision ``logging`` makes — and
  the text of a machine's constant ``Log`` action after the time is made once;
- names a cluster's node after the logger (``LOGGER [NODE]:``) when given a ``tag``.

Records from everything else (other loggers, warnings, exceptions) come through
:meth:`emit` as usual, in order with the direct lines.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TextIO

from sansio_signal.actions import Log

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The format of every line (``logging``'s default time format)."""


class _LevelNames(dict[int, str]):
    """``logging.getLevelName`` as a dictionary lookup (a custom level: asked once)."""

    def __missing__(self, level: int) -> str:
        name = self[level] = logging.getLevelName(level)
        return name


_LEVEL_NAMES = _LevelNames()

_TAILS = 256
"""Log actions whose text :meth:`LogLines.action_line` keeps (the machine's constant
ones come first; a line built anew each time is not worth keeping)."""


class LogLines(logging.Handler):
    """A handler writing ``FORMAT`` lines to ``stream``, one ``write`` per loop turn."""

    def __init__(self, stream: TextIO, tag: str = "") -> None:
        super().__init__()
        self.stream = stream
        self.tag = tag
        """Written after the logger's name, in brackets (a cluster's node id), if any."""
        name = f"%(name)s [{tag}]" if tag else "%(name)s"
        self.setFormatter(logging.Formatter(FORMAT.replace("%(name)s", name)))
        self._pending: list[str] = []
        self._scheduled = False
        self._second = -1
        self._prefix = ""
        self._millis = -1
        self._stamped = ""
        self._tails: dict[int, tuple[Log, str]] = {}

    def line(self, level: int, name: str, message: str) -> None:
        """One line, as a record of ``level`` from logger ``name`` would be written
        (the caller checked that the logger is enabled for ``level``). Called from the
        event loop's thread only (the relay's): :meth:`flush` runs there too, so the two
        never interleave and this takes no lock."""
        self._pending.append(self._stamp() + self._tail(level, name, message))
        if not self._scheduled:
            self._schedule()

    def action_line(self, action: Log, name: str) -> None:
        """:meth:`line` for a machine's :class:`~sansio_signal.actions.Log` action. The
        machine builds the line of a relayed frame once per frame type and hands the
        same object every time: its text after the time is made once (the cache keeps
        the object, so its id cannot be another's)."""
        entry = self._tails.get(id(action))
        if entry is not None and entry[0] is action:
            tail = entry[1]
        else:
            tail = self._tail(action.level, name, action.text())
            if len(self._tails) < _TAILS:
                self._tails[id(action)] = (action, tail)
        self._pending.append(self._stamp() + tail)
        if not self._scheduled:
            self._schedule()

    def _tail(self, level: int, name: str, message: str) -> str:
        if self.tag:
            name = f"{name} [{self.tag}]"
        return f" {_LEVEL_NAMES[level]} {name}: {message}\n"

    def _stamp(self) -> str:
        """``logging``'s time, ``YYYY-MM-DD HH:MM:SS,mmm``, made once per millisecond."""
        now = time.time()
        millis = int(now * 1000)
        if millis != self._millis:
            self._millis = millis
            second = millis // 1000
            if second != self._second:
                self._second = second
                self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._stamped = f"{self._prefix},{millis % 1000:03d}"
        return self._stamped

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._add(self.format(record) + "\n")
        except Exception:
            self.handleError(record)

    def _add(self, text: str) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._pending.append(text)
            if not self._scheduled:
                self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: nothing to batch with
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every line kept so far."""
        with self.lock:  # type: ignore[union-attr]
            self._scheduled = False
            if not self._pending:
                return
            text = "".join(self._pending)
            self._pending.clear()
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: nothing to do about it
                pass
