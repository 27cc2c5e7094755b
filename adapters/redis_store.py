"""The shared store of scale-out on Redis (``serve --redis URL``): :mod:`sansio_signal.store`'s
primitives as Lua scripts, one round trip each.

Nothing here decides anything about the protocol: each script is one of the store's
generic primitives exactly as :mod:`sansio_signal.store` documents it (compare-and-set of
a versioned hash with appends, append to the lists a hash names, take a list) and
:class:`~sansio_signal.testing.store.SimStore` implements in memory; ``tests/test_store.py``
runs the same expectations against both.

Keys (``P`` is the prefix, default ``ss:``; ``{R}`` keeps a room's keys in one Redis
Cluster slot):

- ``P{R}:room`` — hash: ``user id → member record`` (JSON), and field ``#`` the version;
- ``P{R}:box:U`` — list: member ``U``'s mailbox (capped, expiring);
- ``Pnode:N`` — stream: notices for node ``N`` (``MailNotice`` and ``NodeMessage``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sansio_signal.store import (
    ClaimNode,
    CommitRoom,
    DeadNodes,
    FindDeadNodes,
    MailNotice,
    MemberRecord,
    NodeClaimed,
    NodeMessage,
    Post,
    Posted,
    ReadRoom,
    RoomCommitted,
    RoomRead,
    StoreFailed,
    StoreOp,
    StoreResult,
    Taken,
)

MAILBOX_CAP = 512
"""Frames a mailbox holds at most (serve passes ``--resume-queue-frames``)."""

_FULL = "\x00full"
"""Marks a mailbox that refused a frame (so that it is said once); never taken."""

MAILBOX_TTL_MS = 300_000
"""A mailbox nobody takes is dropped this long after its last frame."""

EMPTY_ROOM_TTL_MS = 3_600_000
"""How long an empty room's version is kept: a node that read a room before it emptied
cannot commit against a new room of the same name that reached the same version
(versions only grow while the key lives)."""

NOTICES_CAP = 100_000
"""Entries a node's notice stream keeps at most (a node reads them as they come)."""

_VERSION = "#"  # not an id character: never a member's field

# Shared Lua: append ARGV text to the mailbox of `user` in the room hash `room`, with the
# cap and expiry, and a notice to the member's node when the mailbox was empty and the
# member is not held. Returns 1 when appended, 0 when `user` is not a member.
_APPEND = """
local FULL = '\\0full'
local function append(room, prefix, roomid, user, text, cap, ttl, noticecap)
  local raw = redis.call('HGET', room, user)
  if not raw then return 0 end
  local box = prefix .. '{' .. roomid .. '}:box:' .. user
  local length = redis.call('LLEN', box)
  if length >= cap then
    if length == cap then  -- said once: the refused frame marks the mailbox full
      redis.call('RPUSH', box, FULL)
      redis.call('XADD', prefix .. 'node:' .. cjson.decode(raw).node, 'MAXLEN', '~',
                 noticecap, '*', 'room', roomid, 'user', user, 'full', '1')
    end
    return 0
  end
  local size = redis.call('RPUSH', box, text)
  redis.call('PEXPIRE', box, ttl)
  if size == 1 then
    local record = cjson.decode(raw)
    if not record.held then
      redis.call('XADD', prefix .. 'node:' .. record.node, 'MAXLEN', '~', noticecap, '*',
                 'room', roomid, 'user', user)
    end
  end
  return 1
end
"""

_COMMIT = (
    _APPEND
    + """
local room = KEYS[1]
local prefix, roomid = ARGV[1], ARGV[2]
local cap, ttl, noticecap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local expected = tonumber(ARGV[6])
local version = tonumber(redis.call('HGET', room, '#') or '0')
if version ~= expected then
  return {0, version, redis.call('HGETALL', room)}
end
local function unindex(user)
  local old = redis.call('HGET', room, user)
  if old then
    redis.call('SREM', prefix .. 'idx:' .. cjson.decode(old).node, roomid .. '\\n' .. user)
  end
end
local i = 7
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local user, raw = ARGV[i], ARGV[i + 1]
  unindex(user)
  redis.call('HSET', room, user, raw)
  local node = cjson.decode(raw).node
  redis.call('SADD', prefix .. 'idx:' .. node, roomid .. '\\n' .. user)
  redis.call('SADD', prefix .. 'nodes', node)
  i = i + 2
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  unindex(ARGV[i])
  redis.call('HDEL', room, ARGV[i])
  redis.call('DEL', prefix .. '{' .. roomid .. '}:box:' .. ARGV[i])
  i = i + 1
end
version = redis.call('HINCRBY', room, '#', 1)
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  append(room, prefix, roomid, ARGV[i], ARGV[i + 1], cap, ttl, noticecap)
  i = i + 2
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('XADD', prefix .. 'node:' .. ARGV[i], 'MAXLEN', '~', noticecap, '*',
             'tell', ARGV[i + 1])
  i = i + 2
end
if redis.call('HLEN', room) == 1 then
  redis.call('PEXPIRE', room, tonumber(ARGV[#ARGV]))  -- empty: only its version, for a while
else
  redis.call('PERSIST', room)
end
return {1, version, redis.call('HGETALL', room)}
"""
)

_POST = (
    _APPEND
    + """
local room = KEYS[1]
local prefix, roomid = ARGV[1], ARGV[2]
local cap, ttl, noticecap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local user, text = ARGV[6], ARGV[7]
if user ~= '' then return append(room, prefix, roomid, user, text, cap, ttl, noticecap) end
local count = 0
local fields = redis.call('HKEYS', room)
for _, field in ipairs(fields) do
  if field ~= '#' then
    count = count + append(room, prefix, roomid, field, text, cap, ttl, noticecap)
  end
end
return count
"""
)

_FIND_DEAD = """
local prefix = ARGV[1]
local dead = {}
for _, node in ipairs(redis.call('SMEMBERS', prefix .. 'nodes')) do
  if redis.call('EXISTS', prefix .. 'alive:' .. node) == 0 then
    if redis.call('SCARD', prefix .. 'idx:' .. node) == 0 then
      redis.call('SREM', prefix .. 'nodes', node)
    else
      table.insert(dead, node)
    end
  end
end
return dead
"""

_CLAIM = """
local prefix, node, ttl = ARGV[1], ARGV[2], ARGV[3]
if not redis.call('SET', prefix .. 'sweep:' .. node, '1', 'NX', 'PX', ttl) then return {0} end
return {1, redis.call('SMEMBERS', prefix .. 'idx:' .. node)}
"""

_TAKE = """
local room, box = KEYS[1], KEYS[2]
local raw = redis.call('HGET', room, ARGV[1])
if not raw then return {} end
local record = cjson.decode(raw)
if record.held or record.node ~= ARGV[2] or tostring(record.conn) ~= ARGV[3] then return {} end
local frames = redis.call('LRANGE', box, 0, -1)
redis.call('DEL', box)
return frames
"""


def _result(op: StoreOp, reply: Any) -> StoreResult:
    """The answer to ``op`` from its Redis reply."""
    if isinstance(op, ReadRoom):
        flat = _flat(reply)
        return RoomRead(op=op.op, room=op.room, version=_version(flat), members=_members(flat))
    if isinstance(op, CommitRoom):
        ok, version, flat = reply
        return RoomCommitted(
            op=op.op, room=op.room, ok=bool(ok), version=int(version), members=_members(flat)
        )
    if isinstance(op, Post):
        return Posted(op=op.op, count=int(reply))
    if isinstance(op, FindDeadNodes):
        return DeadNodes(op=op.op, nodes=tuple(sorted(_text(n) for n in reply)))
    if isinstance(op, ClaimNode):
        if not int(reply[0]):
            return NodeClaimed(op=op.op, node=op.node, members=None)
        pairs = (_text(m).split("\n", 1) for m in reply[1])
        members = tuple(sorted((room, user) for room, user in pairs))
        return NodeClaimed(op=op.op, node=op.node, members=members)
    return Taken(op=op.op, frames=tuple(t for t in map(_text, reply) if t != _FULL))


def _record_json(record: MemberRecord) -> str:
    return json.dumps(
        {"node": record.node, "conn": record.conn, "token": record.token, "held": record.held},
        separators=(",", ":"),
    )


def _members(flat: Sequence[bytes | str]) -> dict[str, MemberRecord]:
    """A room's HGETALL (field, value, ...) as records (the version field left out)."""
    out: dict[str, MemberRecord] = {}
    for i in range(0, len(flat), 2):
        field = _text(flat[i])
        if field == _VERSION:
            continue
        raw = json.loads(_text(flat[i + 1]))
        out[field] = MemberRecord(
            node=str(raw["node"]),
            conn=int(raw["conn"]),
            token=str(raw["token"]),
            held=bool(raw["held"]),
        )
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStore:
    """:mod:`sansio_signal.store`'s primitives on one Redis (``redis://`` / ``rediss://``)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "ss:",
        mailbox_cap: int = MAILBOX_CAP,
        mailbox_ttl_ms: int = MAILBOX_TTL_MS,
    ) -> None:
        self.redis = client
        self.errors: tuple[type[BaseException], ...] = (RedisError, OSError)
        """What :meth:`notices` and :meth:`heartbeat` raise when Redis cannot be reached."""
        self.prefix = prefix
        self.mailbox_cap = mailbox_cap
        self.mailbox_ttl_ms = mailbox_ttl_ms
        self._commit = client.register_script(_COMMIT)
        self._post = client.register_script(_POST)
        self._take = client.register_script(_TAKE)
        self._find_dead = client.register_script(_FIND_DEAD)
        self._claim = client.register_script(_CLAIM)
        self._last_notice: dict[str, str] = {}

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 5.0, **kwargs: Any) -> RedisStore:
        """A store on the Redis at ``url``. ``timeout``: seconds a command may take (or a
        connection to open) before it counts as Redis being unreachable — a Redis that
        accepts connections but stops answering must not hold the relay's joins."""
        client = aioredis.Redis.from_url(
            url, socket_timeout=max(timeout, 2.0), socket_connect_timeout=timeout
        )
        return cls(client, **kwargs)

    def _room_key(self, room: str) -> str:
        return f"{self.prefix}{{{room}}}:room"

    def _common(self, room: str) -> list[str | int]:
        return [self.prefix, room, self.mailbox_cap, self.mailbox_ttl_ms, NOTICES_CAP]

    async def apply(self, op: StoreOp) -> StoreResult:
        """Run one operation; a Redis that cannot be reached is :class:`StoreFailed`."""
        (result,) = await self.apply_many([op])
        return result

    async def apply_many(self, ops: Sequence[StoreOp]) -> list[StoreResult]:
        """Run ``ops`` in order in one round trip (a pipeline, not a transaction: each
        operation is atomic on its own, and Redis runs them in this order). A Redis that
        cannot be reached answers :class:`StoreFailed` to each of them."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for op in ops:
                    await self._queue(pipe, op)
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            return [StoreFailed(op=op.op, reason=reason) for op in ops]
        return [_result(op, reply) for op, reply in zip(ops, replies, strict=True)]

    async def _queue(self, pipe: Any, op: StoreOp) -> None:
        """Queue ``op`` on ``pipe`` (a script call on a pipeline queues it: awaited, it
        sends nothing)."""
        if isinstance(op, FindDeadNodes):
            await self._find_dead(keys=[], args=[self.prefix], client=pipe)
            return
        if isinstance(op, ClaimNode):
            await self._claim(keys=[], args=[self.prefix, op.node, op.ttl_ms], client=pipe)
            return
        key = self._room_key(op.room)
        if isinstance(op, ReadRoom):
            pipe.hgetall(key)
        elif isinstance(op, CommitRoom):
            args: list[str | int] = [*self._common(op.room), op.expected]
            args.append(len(op.put))
            for user, record in op.put.items():
                args += [user, _record_json(record)]
            args.append(len(op.delete))
            args += list(op.delete)
            args.append(len(op.post))
            for user, text in op.post:
                args += [user, text]
            args.append(len(op.tell))
            for node, text in op.tell:
                args += [node, text]
            args.append(EMPTY_ROOM_TTL_MS)
            await self._commit(keys=[key], args=args, client=pipe)
        elif isinstance(op, Post):
            await self._post(
                keys=[key], args=[*self._common(op.room), op.user or "", op.text], client=pipe
            )
        else:
            box = f"{self.prefix}{{{op.room}}}:box:{op.user}"
            await self._take(keys=[key, box], args=[op.user, op.node, str(op.conn)], client=pipe)

    async def heartbeat(self, node: str, ttl_ms: int) -> bool:
        """Say that ``node`` is alive for ``ttl_ms`` more; whether it was still alive
        (false for the first beat, and after a lapse: the others may have swept it).
        Raises when Redis cannot be reached."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(f"{self.prefix}alive:{node}", "1", px=ttl_ms, get=True)
            pipe.sadd(f"{self.prefix}nodes", node)
            was, _added = await pipe.execute()
        return was is not None

    async def retire(self, node: str) -> None:
        """``node`` stops (a clean shutdown): its liveness ends now, so the others take
        its held members over at their next sweep instead of after the node timeout."""
        await self.redis.delete(f"{self.prefix}alive:{node}")

    async def notices(
        self, node: str, *, block_ms: int | None = None, count: int = 1000
    ) -> list[MailNotice | NodeMessage]:
        """The notices for ``node`` since the last call (waiting up to ``block_ms`` for
        one when there are none; ``None``: do not wait)."""
        stream = f"{self.prefix}node:{node}"
        last = self._last_notice.get(node, "$" if block_ms is not None else "0")
        if last == "$" and block_ms is None:
            last = "0"
        reply: Any = await self.redis.xread({stream: last}, count=count, block=block_ms)
        out: list[MailNotice | NodeMessage] = []
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                self._last_notice[node] = _text(entry_id)
                decoded = {_text(k): _text(v) for k, v in fields.items()}
                if "tell" in decoded:
                    out.append(NodeMessage(text=decoded["tell"]))
                else:
                    full = decoded.get("full") == "1"
                    out.append(MailNotice(room=decoded["room"], user=decoded["user"], full=full))
        return out


def _flat(value: Any) -> list[bytes | str]:
    """HGETALL's reply as a flat field/value list (redis-py may already make a dict)."""
    if isinstance(value, Mapping):
        flat: list[bytes | str] = []
        for k, v in value.items():
            flat += [k, v]
        return flat
    return list(value)


def _version(value: Any) -> int:
    flat = _flat(value)
    for i in range(0, len(flat), 2):
        if _text(flat[i]) == _VERSION:
            return int(_text(flat[i + 1]))
    return 0
