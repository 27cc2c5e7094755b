"""Trace records: every event into and action out of a machine as one JSON object.

The core only turns attrs instances into plain JSON-able dicts; writing the lines to a
file is the adapter's job. A record looks like::

    {"t": 812.5, "dir": "in", "kind": "FrameReceived", "conn": 3, "data": "...",
     "wall_time": 1764100000.5}

``t`` is the machine's ``now`` (monotonic); ``dir`` is ``"in"`` for events and
``"out"`` for actions; the remaining keys are the object's fields (enums as their
values, tuples as lists, bytes as ``{"bytes": hex}``). A client's records also carry
``user`` (and ``peer``, ``epoch``, ``before``/``after`` for anything about one peer).

``now`` is monotonic and each process (or browser page) has its own, so traces of
different machines are lined up by wall time: every client record carries
:data:`WALL_TIME` (Unix seconds, added by the adapter that writes it: Python's
``Client`` and the browser's ``SignalingClient`` alike), and the relay's
``FrameReceived`` records carry it as an event field of the same name. ``diagnose``
maps each trace's ``t`` onto wall time with those.

Adapters write each record as it is made (flushed per record), so that a process that
is killed leaves its trace up to the kill.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

import attrs

from .wire import JSONValue, dumps

WALL_TIME = "wall_time"
"""The key of a record's wall-clock time (Unix seconds): the one clock that traces of
different processes share."""


def _plain(value: Any) -> JSONValue:
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, bytes):
        return {"bytes": value[:4096].hex(), "length": len(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if attrs.has(type(value)):
        return {"kind": type(value).__name__, **fields_of(value)}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def fields_of(obj: Any) -> dict[str, JSONValue]:
    """The attrs fields of ``obj`` as plain JSON values."""
    return {f.name: _plain(getattr(obj, f.name)) for f in attrs.fields(type(obj))}


def record(now: float, direction: str, obj: Any) -> dict[str, JSONValue]:
    """One trace record for an event (``direction="in"``) or action (``"out"``)."""
    return {"t": now, "dir": direction, "kind": type(obj).__name__, **fields_of(obj)}


def record_line(now: float, direction: str, obj: Any) -> str:
    """:func:`record` serialized as one JSON line (without the newline)."""
    return dumps(record(now, direction, obj))
