"""Runs the client machine's peer-connection actions on aiortc's RTCPeerConnection.

No decision is made here: :class:`AiortcPeers` executes ``CreatePeer``,
``CreateOffer``, ``CreateAnswer``, ``SetRemoteDescription``, ``AddIceCandidate`` and
``ClosePeer`` and reports their results as client events. What it knows is aiortc
itself (``../shared/FIELD-NOTES.md``):

- it declares :data:`~sansio_signal.negotiation.AIORTC` capabilities — no rollback, no
  ICE restart, no outgoing trickle (``setLocalDescription`` gathers and puts every
  candidate in the SDP);
- aiortc has no operation queue, so the operations of one connection run one at a time
  on a task of their own;
- browser candidates arrive as ``candidate:...`` with ``sdpMid``/``sdpMLineIndex``;
  ``""``/``null`` is end-of-candidates (``addIceCandidate(None)``); an mDNS ``.local``
  candidate can block for a second while aioice fails to resolve it, so it is added on
  a task of its own instead of holding up the connection's queue;
- ICE servers are always passed explicitly (``iceServers=None`` would add a public STUN
  server that makes every gathering wait 5 s here);
- aioice swallows why a STUN or TURN server gave no candidate: when the TURN server
  did not, the adapter asks it once more itself (a TURN allocation, as aioice would) to
  learn the error — ``401`` is a refused credential — and reports it in
  :class:`~sansio_signal.events.IceGatheringDone`; aiortc uses only the first STUN and
  the first TURN server of its configuration: the others are logged as unused;
- aiortc has no candidate-pair stats: ``ReadSelectedPair`` (the machine asks when a
  connection becomes connected) reads aioice's nominated pair
  (:class:`~sansio_signal.events.CandidatePairSelected`).

The data channel labelled ``chat`` is made by the initiator before its first offer
(PROTOCOL.md's peer convention) and arrives at the other side through ``datachannel``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import aioice.ice
import aioice.stun
import aioice.turn
import attrs
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceCandidate,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcicetransport import connection_kwargs
from aiortc.sdp import candidate_from_sdp

from sansio_signal.actions import (
    AddIceCandidate,
    ClosePeer,
    CreateAnswer,
    CreateOffer,
    CreatePeer,
    PeerConnectionAction,
    ReadSelectedPair,
    RollbackLocalDescription,
    SetRemoteDescription,
)
from sansio_signal.events import (
    CandidatePairSelected,
    ClientEvent,
    ConnectionStateChanged,
    IceGatheringDone,
    IceServerFailure,
    LocalDescriptionCreated,
    OperationFailed,
    RemoteDescriptionApplied,
)
from sansio_signal.negotiation import AIORTC, Capabilities
from sansio_signal.turn import candidate_type_from, is_turn_url
from sansio_signal.wire import IceCandidate, SessionDescription

logger = logging.getLogger("sansio_signal.aiortc")

CHANNEL_LABEL = "chat"
"""The label of the data channel each pair of peers opens for its messages."""

PROBE_TIMEOUT = 5.0
"""How long the adapter waits for a STUN/TURN server it asks again (aioice's own
gathering waits as long)."""


@attrs.frozen(kw_only=True)
class IceServer:
    """A STUN or TURN server (``turn:`` URLs take ``username`` and ``credential``)."""

    urls: str
    username: str | None = None
    credential: str | None = None

    def to_aiortc(self) -> RTCIceServer:
        """The aiortc form."""
        return RTCIceServer(urls=self.urls, username=self.username, credential=self.credential)

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> list[IceServer]:
        """An RTCIceServer dictionary (``urls``: one URL or a list of them; a TURN
        server's ``username`` and ``credential``), one :class:`IceServer` per URL.
        Raises ``ValueError`` when it is not one."""
        urls, username, credential = (entry.get(k) for k in ("urls", "username", "credential"))
        listed = [urls] if isinstance(urls, str) else urls
        if (
            not isinstance(listed, list)
            or not listed
            or not all(isinstance(u, str) for u in listed)
        ):
            raise ValueError(f"urls is not a URL or a list of URLs: {urls!r}")
        if not all(v is None or isinstance(v, str) for v in (username, credential)):
            raise ValueError("username and credential are strings")
        return [cls(urls=url, username=username, credential=credential) for url in listed]


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Gather ICE candidates on 127.0.0.1 only (for tests and the demo on one machine).

    aioice skips 127.0.0.1 when it lists host addresses; on a host whose other
    addresses must not be used (or that has none), peers on this machine then still
    find each other. Process-wide while the block runs.
    """
    original = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


@attrs.define(eq=False)
class _Connection:
    peer_id: str
    pc: RTCPeerConnection
    queue: asyncio.Queue[PeerConnectionAction]
    worker: asyncio.Task[None] | None = None
    report: asyncio.Task[None] | None = None
    """Reporting what gathering found (aiortc gathers once per connection)."""


def to_aiortc_candidate(candidate: IceCandidate) -> RTCIceCandidate:
    """A browser-style candidate as aiortc's ``RTCIceCandidate``."""
    text = candidate.candidate.removeprefix("candidate:")
    result = candidate_from_sdp(text)
    result.sdpMid = candidate.sdp_mid
    result.sdpMLineIndex = candidate.sdp_mline_index
    return result


class AiortcPeers:
    """The peer connections of one client, driven by its machine's actions.

    ``on_event`` receives every result (feed it to the machine); ``on_channel`` is
    called with ``(peer_id, pc handle, channel)`` when a ``chat`` data channel is there.
    """

    capabilities: Capabilities = AIORTC

    def __init__(
        self,
        *,
        ice_servers: Sequence[IceServer] = (),
        on_event: Callable[[ClientEvent], None],
        on_channel: Callable[[str, int, RTCDataChannel], None],
    ) -> None:
        self._ice_servers: list[IceServer] = []
        self.ice_servers = list(ice_servers)
        self._on_event = on_event
        self._on_channel = on_channel
        self._connections: dict[int, _Connection] = {}

    @property
    def ice_servers(self) -> list[IceServer]:
        """The STUN/TURN servers new connections use (aiortc: the first of each kind)."""
        return self._ice_servers

    @ice_servers.setter
    def ice_servers(self, servers: list[IceServer]) -> None:
        used = _used(servers)
        for server in servers:
            if server not in used:
                logger.warning(
                    "ICE server %s is not used: aiortc uses only the first STUN and the "
                    "first TURN server it is given",
                    server.urls,
                )
        self._ice_servers = servers

    def connection(self, handle: int) -> RTCPeerConnection | None:
        """The RTCPeerConnection behind ``handle`` (for adding media, say)."""
        conn = self._connections.get(handle)
        return None if conn is None else conn.pc

    def execute(self, action: PeerConnectionAction) -> None:
        """Start ``action``; its result comes back through ``on_event``."""
        if isinstance(action, CreatePeer):
            self._create(action)
        elif isinstance(action, ClosePeer):
            conn = self._connections.pop(action.pc, None)
            if conn is not None:
                asyncio.get_running_loop().create_task(self._close(conn))
        else:
            conn = self._connections.get(action.pc)
            if conn is not None:
                conn.queue.put_nowait(action)

    async def close(self) -> None:
        """Close every connection."""
        connections, self._connections = list(self._connections.values()), {}
        await asyncio.gather(*(self._close(c) for c in connections))

    # ------------------------------------------------------------------ internals

    def _create(self, action: CreatePeer) -> None:
        config = RTCConfiguration(iceServers=[s.to_aiortc() for s in self.ice_servers])
        pc = RTCPeerConnection(configuration=config)
        conn = _Connection(peer_id=action.peer_id, pc=pc, queue=asyncio.Queue())
        self._connections[action.pc] = conn
        handle = action.pc

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if self._connections.get(handle) is conn:
                self._on_event(ConnectionStateChanged(pc=handle, state=pc.connectionState))

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            # aiortc hands it over already open (FIELD-NOTES).
            if channel.label == CHANNEL_LABEL and self._connections.get(handle) is conn:
                self._on_channel(action.peer_id, handle, channel)

        if action.initiator:
            channel = pc.createDataChannel(CHANNEL_LABEL)

            @channel.on("open")
            def on_open() -> None:
                if self._connections.get(handle) is conn:
                    self._on_channel(action.peer_id, handle, channel)

        conn.worker = asyncio.get_running_loop().create_task(self._work(handle, conn))

    async def _work(self, handle: int, conn: _Connection) -> None:
        while True:
            action = await conn.queue.get()
            try:
                event = await self._run(handle, conn, action)
            except Exception as exc:  # aiortc raises many kinds; all are the op's failure
                logger.info("%s on connection %d failed: %r", type(action).__name__, handle, exc)
                event = OperationFailed(
                    pc=handle, operation=type(action).__name__, error=f"{exc!r}"
                )
            if event is not None and self._connections.get(handle) is conn:
                self._on_event(event)
                if isinstance(event, LocalDescriptionCreated) and conn.report is None:
                    conn.report = asyncio.get_running_loop().create_task(
                        self._report_gathering(handle, conn, event)
                    )

    async def _run(
        self, handle: int, conn: _Connection, action: PeerConnectionAction
    ) -> ClientEvent | None:
        pc = conn.pc
        if isinstance(action, CreateOffer | CreateAnswer):
            description = (
                await pc.createOffer()
                if isinstance(action, CreateOffer)
                else await pc.createAnswer()
            )
            await pc.setLocalDescription(description)  # gathers: every candidate in the SDP
            local = pc.localDescription
            return LocalDescriptionCreated(
                pc=handle, description=SessionDescription(type=local.type, sdp=local.sdp)
            )
        if isinstance(action, SetRemoteDescription):
            await pc.setRemoteDescription(
                RTCSessionDescription(sdp=action.description.sdp, type=action.description.type)
            )
            return RemoteDescriptionApplied(pc=handle)
        if isinstance(action, AddIceCandidate):
            candidate = action.candidate
            if candidate is None or candidate.candidate == "":
                await pc.addIceCandidate(None)
            elif ".local " in candidate.candidate:
                # aioice may spend a second failing to resolve a browser's mDNS name:
                # not on this connection's queue.
                asyncio.get_running_loop().create_task(self._add_slow(handle, pc, candidate))
            else:
                await pc.addIceCandidate(to_aiortc_candidate(candidate))
            return None
        if isinstance(action, ReadSelectedPair):
            pair = selected_pair(pc)
            if pair is None:
                logger.info("connection %d: aioice has no nominated pair to report", handle)
                return None
            near, far = pair
            return CandidatePairSelected(
                pc=handle,
                local_type=near.type,
                remote_type=far.type,
                local_address=f"{near.host}:{near.port}",
                remote_address=f"{far.host}:{far.port}",
            )
        if isinstance(action, RollbackLocalDescription):
            raise NotImplementedError("aiortc cannot roll back (its capabilities say so)")
        raise AssertionError(f"unexpected action {action!r}")

    async def _add_slow(self, handle: int, pc: RTCPeerConnection, candidate: IceCandidate) -> None:
        try:
            await pc.addIceCandidate(to_aiortc_candidate(candidate))
        except Exception as exc:
            conn = self._connections.get(handle)
            if conn is not None and conn.pc is pc:
                self._on_event(
                    OperationFailed(pc=handle, operation=AddIceCandidate.__name__, error=f"{exc!r}")
                )

    async def _report_gathering(
        self, handle: int, conn: _Connection, event: LocalDescriptionCreated
    ) -> None:
        """What gathering found (the candidates are all in the local description), and
        why each server that gave no candidate gave none."""
        types = candidate_types(event.description.sdp)
        failures: list[IceServerFailure] = []
        for server in _used(self.ice_servers):
            if candidate_type_from(server.urls) in types:
                continue
            if is_turn_url(server.urls):
                failures.append(await probe_turn(server))
            else:
                failure = IceServerFailure(url=server.urls, error="gave no reflexive address")
                failures.append(failure)
        if self._connections.get(handle) is conn:
            self._on_event(
                IceGatheringDone(
                    pc=handle,
                    servers=tuple(s.urls for s in self.ice_servers),
                    candidate_types=types,
                    failures=tuple(failures),
                )
            )

    async def _close(self, conn: _Connection) -> None:
        for task in (conn.worker, conn.report):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await conn.pc.close()


_TYPE_ORDER = ("host", "srflx", "prflx", "relay")


def candidate_types(sdp: str) -> tuple[str, ...]:
    """The types of the candidates in ``sdp``, each once (host, srflx, prflx, relay)."""
    found = set()
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            words = line.split()
            if "typ" in words[:-1]:
                found.add(words[words.index("typ") + 1])
    return tuple(sorted(found, key=lambda t: (*_TYPE_ORDER, t).index(t)))


def selected_pair(pc: RTCPeerConnection) -> tuple[aioice.Candidate, aioice.Candidate] | None:
    """The (local, remote) candidates of the pair aioice nominated on ``pc``'s transport
    (one transport: everything is bundled), or ``None`` before there is one."""
    transports = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    for dtls in transports:
        ice_connection = getattr(dtls.transport, "_connection", None)
        nominated = getattr(ice_connection, "_nominated", None) or {}
        for pair in nominated.values():
            return pair.local_candidate, pair.remote_candidate
    return None


def _used(servers: Sequence[IceServer]) -> list[IceServer]:
    """The servers aiortc uses of ``servers``: the first STUN and the first TURN server
    its own parser takes."""
    used = []
    for kind in ("stun_server", "turn_server"):
        for server in servers:
            if kind in connection_kwargs([server.to_aiortc()]):
                used.append(server)
                break
    return used


async def probe_turn(server: IceServer) -> IceServerFailure:
    """Ask ``server`` (the TURN server aiortc used) for an allocation once more, to learn
    why gathering got no relay candidate from it: the failure to report."""
    used = connection_kwargs([server.to_aiortc()])
    try:
        transport, _ = await asyncio.wait_for(
            aioice.turn.create_turn_endpoint(
                asyncio.DatagramProtocol,
                server_addr=used["turn_server"],
                username=server.username,
                password=server.credential,
                lifetime=60,
                ssl=bool(used.get("turn_ssl")),
                transport=str(used.get("turn_transport", "udp")),
            ),
            PROBE_TIMEOUT,
        )
    except aioice.stun.TransactionFailed as exc:
        code, reason = exc.response.attributes.get("ERROR-CODE", (None, "failed"))
        return IceServerFailure(
            url=server.urls, error=f"{code} {reason}", code=code, username=server.username
        )
    except (TimeoutError, aioice.stun.TransactionTimeout):
        error = f"no answer within {PROBE_TIMEOUT:g} s"
        return IceServerFailure(url=server.urls, error=error, username=server.username)
    except (OSError, ConnectionError, ValueError) as exc:
        return IceServerFailure(url=server.urls, error=f"{exc!r}", username=server.username)
    transport.close()
    return IceServerFailure(
        url=server.urls,
        error="gave no relay candidate while gathering (it allocates when asked again)",
        username=server.username,
    )
