"""A deterministic network of one relay and N clients, with model peer connections.

:class:`SimNetwork` wires one :class:`~sansio_signal.RelayMachine` and any number of
:class:`~sansio_signal.client.ClientMachine` instances, each with its own
:class:`~.model.ModelPeerConnection` objects, and runs them on a virtual clock. Nothing
in it is random unless you ask: delays come from a seeded generator.

Everything that is "on its way" sits in a FIFO queue, and only the head of a queue can
happen next — exactly the freedom the real system has:

- one queue per direction per client WebSocket (a WebSocket keeps order, so frames on
  one connection are never reordered, but the up- and down-links of different clients
  interleave freely);
- one queue of operations per peer connection (the adapter serialises them);
- one queue of peer-connection notices per peer connection (gathered candidates,
  connection-state changes).

:meth:`SimNetwork.step` runs the earliest head by time (the default, with latencies
drawn from the seed); :meth:`SimNetwork.moves` and :meth:`SimNetwork.take` let a caller
choose any enabled head instead — that is how the hypothesis tests and the exhaustive
explorer explore orderings. Machine deadlines fire only when nothing else can happen at
an earlier time (or, in chosen mode, when nothing else is enabled).

Faults: ``loss`` and ``duplication`` (probabilities per relayed frame, with a budget so
that a run always recovers), :meth:`SimNetwork.block` (ICE between two users fails),
:meth:`SimNetwork.disconnect` / :meth:`SimNetwork.reconnect` (a WebSocket drops).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from ..actions import (
    AddIceCandidate,
    ClientAction,
    CloseConnection,
    ClosePeer,
    CreateAnswer,
    CreateOffer,
    CreatePeer,
    Log,
    PeerConnectionAction,
    RollbackLocalDescription,
    SendFrame,
    SendToServer,
    SetRemoteDescription,
)
from ..client import ClientMachine, ClientState
from ..events import (
    ClientEvent,
    Connected,
    ConnectionStateChanged,
    Disconnected,
    FrameReceived,
    IceCandidateGathered,
    JoinRequested,
    LeaveRequested,
    LocalDescriptionCreated,
    OperationFailed,
    RemoteDescriptionApplied,
    RenegotiationRequested,
    ServerConnected,
    ServerDisconnected,
    ServerFrameReceived,
)
from ..limits import Limits
from ..negotiation import BROWSER, Capabilities, Link, NegotiationConfig, NegState
from ..relay import RelayMachine
from .model import InvalidStateError, ModelPeerConnection, OperationError
from .relay import DEFAULT_WALL_TIME, counting_tokens


class SplitMix64:
    """A tiny seeded generator (the core may not import :mod:`random`)."""

    def __init__(self, seed: int) -> None:
        self._state = seed & 0xFFFFFFFFFFFFFFFF

    def next_u64(self) -> int:
        """The next 64-bit value."""
        self._state = (self._state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return z ^ (z >> 31)

    def random(self) -> float:
        """A float in [0, 1)."""
        return (self.next_u64() >> 11) / float(1 << 53)

    def uniform(self, low: float, high: float) -> float:
        """A float in [low, high)."""
        return low + (high - low) * self.random()


@attrs.define
class _Item:
    ready_at: float
    payload: Any


@attrs.define
class SimClient:
    """One simulated client: its machine, its connection and its peer connections."""

    user_id: str
    machine: ClientMachine
    capabilities: Capabilities
    conn: int | None = None
    pcs: dict[int, ModelPeerConnection] = attrs.field(factory=dict)
    made: dict[str, int] = attrs.field(factory=dict)
    """Peer connections made so far, per peer."""
    notes: list[ClientAction] = attrs.field(factory=list)
    """Every notification the machine gave the application."""


Move = tuple[str, Any]
"""An enabled move: ``(queue kind, queue key)``."""


class SimNetwork:
    """One relay, N clients, model peer connections, a virtual clock. See the module
    docstring."""

    def __init__(
        self,
        *,
        seed: int = 0,
        latency: tuple[float, float] = (0.001, 0.02),
        op_latency: tuple[float, float] = (0.001, 0.005),
        ice_latency: float = 0.02,
        fail_after: float = 2.0,
        candidates: int = 2,
        loss: float = 0.0,
        duplication: float = 0.0,
        fault_budget: int = 3,
        config: NegotiationConfig | None = None,
        relay_limits: Limits | None = None,
        trace: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.now = 0.0
        """The virtual monotonic clock every machine is fed."""
        self.wall_offset = DEFAULT_WALL_TIME
        """The wall clock reads ``now + wall_offset`` (Unix seconds): what frames to the
        relay carry as ``FrameReceived.wall_time`` (chat ``ts``)."""
        self.rng = SplitMix64(seed)
        self.latency = latency
        self.op_latency = op_latency
        self.ice_latency = ice_latency
        self.fail_after = fail_after
        self.candidates = candidates
        self.loss = loss
        self.duplication = duplication
        self.fault_budget = fault_budget
        self.config = config if config is not None else NegotiationConfig()
        self.relay = RelayMachine(
            limits=relay_limits or Limits(rate_limit=0), new_token=counting_tokens()
        )
        self.clients: dict[str, SimClient] = {}
        self.blocked: set[frozenset[str]] = set()
        self.model_errors: list[str] = []
        """Every exception a model peer connection raised (a correct client causes none)."""
        self.dropped = 0
        self.duplicated = 0
        self.steps = 0
        self._trace = trace
        self._conn_ids = itertools.count(1)
        self._user_of_conn: dict[int, str] = {}
        self._queues: dict[Move, deque[_Item]] = {}
        self._last_ready: dict[Move, float] = {}

    # ------------------------------------------------------------------ set-up

    def add_client(self, user_id: str, capabilities: Capabilities = BROWSER) -> SimClient:
        """A new client (offline until :meth:`connect`)."""
        machine = ClientMachine(
            user_id,
            capabilities=capabilities,
            config=self.config,
            jitter=self.rng.random,
            trace=self._trace,
        )
        client = SimClient(user_id=user_id, machine=machine, capabilities=capabilities)
        self.clients[user_id] = client
        return client

    def connect(self, user_id: str) -> None:
        """Open ``user_id``'s WebSocket (it rejoins its room if it wants one)."""
        client = self.clients[user_id]
        assert client.conn is None, f"{user_id} is already connected"
        client.conn = next(self._conn_ids)
        self._user_of_conn[client.conn] = user_id
        self._relay(Connected(conn=client.conn))
        self._client_event(client, ServerConnected())

    def join(self, user_id: str, room_id: str) -> None:
        """``user_id`` asks to join ``room_id``."""
        self._client_event(self.clients[user_id], JoinRequested(room_id=room_id))

    def leave(self, user_id: str) -> None:
        """``user_id`` asks to leave its room."""
        self._client_event(self.clients[user_id], LeaveRequested())

    def renegotiate(self, user_id: str, peer_id: str) -> None:
        """``user_id`` asks for a renegotiation with ``peer_id`` (if it knows it)."""
        client = self.clients[user_id]
        if peer_id in client.machine.peers:
            self._client_event(client, RenegotiationRequested(peer_id=peer_id))

    def disconnect(self, user_id: str, *, clean: bool = True) -> None:
        """``user_id``'s WebSocket drops: both ends learn of it; frames in flight on it
        are lost."""
        client = self.clients[user_id]
        if client.conn is None:
            return
        conn, client.conn = client.conn, None
        for direction in ("up", "down"):
            self._queues.pop((direction, user_id), None)
        self._relay(Disconnected(conn=conn, clean=clean))
        del self._user_of_conn[conn]
        # A clean close ends our place at the server at once (no resume); a drop may be
        # resumed.
        self._client_event(client, ServerDisconnected(close_code=1000 if clean else None))

    def restart_relay(self) -> None:
        """The relay restarts (``serve`` got SIGTERM and came back): every client's
        WebSocket closes with 1012, frames in flight are lost, and a fresh relay with no
        rooms takes over. Clients reconnect with :meth:`connect`."""
        for user_id, client in sorted(self.clients.items()):
            if client.conn is None:
                continue
            client.conn = None
            for direction in ("up", "down"):
                self._queues.pop((direction, user_id), None)
            self._client_event(client, ServerDisconnected(close_code=1012))
        self._user_of_conn.clear()
        self.relay = RelayMachine(limits=self.relay.limits, new_token=counting_tokens("new"))

    def block(self, a: str, b: str) -> None:
        """ICE between ``a`` and ``b`` fails from now on (until :meth:`unblock`)."""
        self.blocked.add(frozenset((a, b)))
        for x, y in ((a, b), (b, a)):
            pc = self._current_pc(x, y)
            if pc is not None and pc.connection_state == "connected":
                self._notice(x, y, "failed", self.fail_after)

    def unblock(self, a: str, b: str) -> None:
        """ICE between ``a`` and ``b`` works again."""
        self.blocked.discard(frozenset((a, b)))
        self._check_pair(a, b)

    # ------------------------------------------------------------------ running

    def moves(self) -> list[Move]:
        """Every queue whose head could happen next (sorted, for replayable choices)."""
        return sorted(key for key, queue in self._queues.items() if queue)

    def quiet(self) -> bool:
        """Nothing on its way and no deadline pending anywhere."""
        return not self.moves() and self._next_timer() is None

    def take(self, move: Move) -> None:
        """Run the head of ``move``'s queue now (whatever its ready time)."""
        item = self._queues[move].popleft()
        if not self._queues[move]:
            del self._queues[move]
        self.steps += 1
        kind, key = move
        if kind == "up":
            user = self.clients.get(key)
            if user is not None and user.conn is not None:
                self._relay(
                    FrameReceived(
                        conn=user.conn, data=item.payload, wall_time=self.now + self.wall_offset
                    )
                )
        elif kind == "down":
            client = self.clients[key]
            if client.conn is not None:
                self._client_event(client, ServerFrameReceived(text=item.payload))
        elif kind == "op":
            self._run_op(key, item.payload)
        else:  # "notice"
            self._run_notice(key, item.payload)

    def step(self) -> bool:
        """Run the earliest thing that can happen; ``False`` when the network is quiet."""
        moves = self.moves()
        timer = self._next_timer()
        if moves:
            move = min(moves, key=lambda m: (self._queues[m][0].ready_at, m))
            ready = self._queues[move][0].ready_at
            if timer is None or ready <= timer[0]:
                self.now = max(self.now, ready)
                self.take(move)
                return True
        if timer is None:
            return False
        self.now = max(self.now, timer[0])
        self._fire(timer[1])
        return True

    def fire_next_timer(self) -> bool:
        """Advance the clock to the earliest deadline and run it (chosen mode)."""
        timer = self._next_timer()
        if timer is None:
            return False
        self.now = max(self.now, timer[0])
        self._fire(timer[1])
        return True

    def run(self, *, max_steps: int = 100_000, until: float | None = None) -> None:
        """Step until quiet (or ``until`` on the clock, or ``max_steps``)."""
        for _ in range(max_steps):
            if until is not None:
                nxt = self._next_time()
                if nxt is None or nxt > until:
                    self.now = max(self.now, until)
                    return
            if not self.step():
                return
        raise RuntimeError(f"no quiet after {max_steps} steps at t={self.now:.3f}")

    # ------------------------------------------------------------------ observing

    def members(self, room_id: str) -> list[str]:
        """The relay's truth: who is in ``room_id``."""
        return self.relay.directory.members(room_id)

    def problems(self) -> list[str]:
        """Invariants that must hold at any moment (empty when all is well)."""
        found = [f"model raised: {e}" for e in self.model_errors]
        for a, b in itertools.combinations(sorted(self.clients), 2):
            pa = self.clients[a].machine.peers.get(b)
            pb = self.clients[b].machine.peers.get(a)
            if pa is not None and pb is not None and pa.is_initiator == pb.is_initiator:
                found.append(
                    f"{a}/{b}: both sides think they are "
                    f"{'the initiator' if pa.is_initiator else 'polite'}"
                )
            offering = [
                p
                for p in (pa, pb)
                if p is not None and p.state in (NegState.MAKING_OFFER, NegState.HAVE_LOCAL_OFFER)
            ]
            if len(offering) == 2 and not all(
                self.clients[p.our_id].capabilities.rollback for p in offering if not p.is_initiator
            ):
                found.append(f"{a}/{b}: two offers in flight without rollback")
        return found

    def settled_problems(self) -> list[str]:
        """What must hold once the network is quiet: every pair of members connected at
        matching epochs, no state for anyone who is gone."""
        found = self.problems()
        for client in self.clients.values():
            machine = client.machine
            room = machine.room
            if machine.state is not ClientState.JOINED or room is None:
                if machine.peers:
                    found.append(
                        f"{client.user_id}: peers {sorted(machine.peers)} while not in a room"
                    )
                continue
            truth = set(self.members(room.room_id)) - {client.user_id}
            if set(room.members) != truth:
                found.append(
                    f"{client.user_id}: sees {sorted(room.members)}, room has {sorted(truth)}"
                )
            if set(machine.peers) != truth:
                found.append(
                    f"{client.user_id}: peer state for {sorted(machine.peers)}, "
                    f"room has {sorted(truth)}"
                )
            for peer_id, peer in machine.peers.items():
                other = self.clients[peer_id].machine.peers.get(client.user_id)
                if peer.state is not NegState.STABLE or peer.link is not Link.CONNECTED:
                    found.append(
                        f"{client.user_id}->{peer_id}: {peer.state.value}/{peer.link.value}"
                    )
                elif other is None or other.epoch != peer.epoch:
                    found.append(
                        f"{client.user_id}->{peer_id}: epoch {peer.epoch}, theirs "
                        f"{None if other is None else other.epoch}"
                    )
        live = sum(len(c.pcs) for c in self.clients.values())
        wanted = sum(len(c.machine.peers) for c in self.clients.values())
        if live != wanted:
            found.append(f"{live} peer connections open for {wanted} peers (leak)")
        return found

    def fingerprint(self) -> tuple[Any, ...]:
        """Everything that decides what can happen next (not the clock, and with peer
        connections named by pair rather than by handle): two networks with equal
        fingerprints behave alike, which lets an explorer skip repeats."""

        def name(client: SimClient, handle: int | None) -> str | None:
            if handle is None:
                return None
            pc = client.pcs.get(handle)
            return f"closed#{handle}" if pc is None else pc.name

        clients = []
        for user_id, client in sorted(self.clients.items()):
            machine = client.machine
            peers = tuple(
                (
                    peer_id,
                    p.state.value,
                    p.epoch,
                    name(client, p.pc),
                    p.link.value,
                    p.attempts,
                    p.pending_renegotiation,
                    p.has_remote,
                    p.remote_ended,
                    repr(p.remote_buffer),
                    repr(p.local_buffer),
                    p.abandoned_offers,
                    p.last_remote_offer,
                    repr(p.queued_offer),
                    p.notified_connected,
                    repr(p.remote_capabilities),
                    p.deadline_kind,
                )
                for peer_id, p in sorted(machine.peers.items())
            )
            pcs = tuple(
                sorted(
                    (
                        pc.name,
                        pc.signaling_state,
                        pc.local_ufrag,
                        repr(pc.current_local),
                        repr(pc.current_remote),
                        repr(pc.pending_local),
                        repr(pc.pending_remote),
                        pc.remote_ufrag,
                        tuple(sorted(pc.remote_candidates)),
                        pc.remote_ended,
                        pc.connection_state,
                    )
                    for pc in client.pcs.values()
                )
            )
            room = None if machine.room is None else (machine.room.room_id, machine.room.members)
            clients.append(
                (
                    user_id,
                    machine.state.value,
                    machine.room_id,
                    room,
                    client.conn,
                    peers,
                    pcs,
                    tuple(sorted(client.made.items())),
                )
            )
        queues = []
        for (kind, key), queue in self._queues.items():
            if not queue:
                continue
            if kind in ("op", "notice"):
                client = self.clients[key[0]]
                key = (key[0], name(client, key[1]))
                items = tuple(repr(attrs.evolve(item.payload, pc=0)) for item in queue)
            else:
                items = tuple(item.payload for item in queue)
            queues.append((kind, key, items))
        rooms = tuple(
            (room, tuple(self.relay.directory.members(room)))
            for room in sorted({c.machine.room_id or "" for c in self.clients.values()})
            if room
        )
        return (
            tuple(clients),
            tuple(sorted(queues, key=repr)),
            rooms,
            tuple(sorted(tuple(sorted(b)) for b in self.blocked)),
        )

    # ------------------------------------------------------------------ internals

    def _delay(self, span: tuple[float, float]) -> float:
        return self.rng.uniform(*span)

    def _enqueue(self, move: Move, payload: Any, delay: float) -> None:
        # FIFO per queue: nothing overtakes what is already in it.
        ready = max(self.now + delay, self._last_ready.get(move, 0.0))
        self._last_ready[move] = ready
        self._queues.setdefault(move, deque()).append(_Item(ready, payload))

    def _next_timer(self) -> tuple[float, str | None] | None:
        best: tuple[float, str | None] | None = None
        deadline = self.relay.next_deadline()
        if deadline is not None:
            best = (deadline, None)
        for user_id, client in sorted(self.clients.items()):
            deadline = client.machine.next_deadline()
            if deadline is not None and (best is None or deadline < best[0]):
                best = (deadline, user_id)
        return best

    def _next_time(self) -> float | None:
        times = [self._queues[m][0].ready_at for m in self.moves()]
        timer = self._next_timer()
        if timer is not None:
            times.append(timer[0])
        return min(times) if times else None

    def _fire(self, user_id: str | None) -> None:
        self.steps += 1
        if user_id is None:
            self._relay_actions(self.relay.handle_timer(self.now))
            return
        client = self.clients[user_id]
        self._client_actions(client, client.machine.handle_timer(self.now))

    def _relay(self, event: Connected | FrameReceived | Disconnected) -> None:
        self._relay_actions(self.relay.handle(event, self.now))

    def _relay_actions(self, actions: Iterable[Any]) -> None:
        for action in actions:
            if isinstance(action, SendFrame):
                user_id = self._user_of_conn.get(action.conn)
                if user_id is None:
                    continue
                copies = 1
                # Only peer-to-peer signaling is lost or duplicated: membership frames
                # are the room's ground truth, which a WebSocket never loses.
                faulty = action.frame_type.startswith("webrtc-") and self.fault_budget > 0
                if faulty and self.loss and self.rng.random() < self.loss:
                    self.fault_budget -= 1
                    self.dropped += 1
                    copies = 0
                elif faulty and self.duplication and self.rng.random() < self.duplication:
                    self.fault_budget -= 1
                    self.duplicated += 1
                    copies = 2
                for _ in range(copies):
                    self._enqueue(("down", user_id), action.text, self._delay(self.latency))
            elif isinstance(action, CloseConnection):
                user_id = self._user_of_conn.get(action.conn)
                if user_id is not None:
                    self.disconnect(user_id)

    def _client_event(self, client: SimClient, event: ClientEvent) -> None:
        self._client_actions(client, client.machine.handle(event, self.now))

    def _client_actions(self, client: SimClient, actions: list[ClientAction]) -> None:
        for action in actions:
            if isinstance(action, SendToServer):
                if client.conn is not None:
                    self._enqueue(("up", client.user_id), action.text, self._delay(self.latency))
            elif isinstance(action, CreatePeer):
                # Named by pair and count, not by handle: the same history gives the
                # same ICE credentials whatever order other pairs went in.
                count = client.made.get(action.peer_id, 0) + 1
                client.made[action.peer_id] = count
                pc = ModelPeerConnection(
                    f"{client.user_id}-{action.peer_id}-{count}",
                    rollback=client.capabilities.rollback,
                    trickle=client.capabilities.trickle,
                    candidates=self.candidates,
                )
                client.pcs[action.pc] = pc
            elif isinstance(action, ClosePeer):
                self._close_pc(client, action)
            elif isinstance(action, PeerConnectionAction):
                self._enqueue(
                    ("op", (client.user_id, action.pc)), action, self._delay(self.op_latency)
                )
            elif not isinstance(action, Log):
                client.notes.append(action)

    def _close_pc(self, client: SimClient, action: ClosePeer) -> None:
        pc = client.pcs.pop(action.pc, None)
        for kind in ("op", "notice"):
            self._queues.pop((kind, (client.user_id, action.pc)), None)
        if pc is None:
            return
        was_connected = pc.connection_state == "connected"
        pc.close()
        partner = self._current_pc(action.peer_id, client.user_id)
        if was_connected and partner is not None and partner.connection_state == "connected":
            # The far side notices (consent freshness / DTLS close) a little later.
            self._notice(action.peer_id, client.user_id, "failed", self.fail_after)

    def _current_pc(self, user_id: str, peer_id: str) -> ModelPeerConnection | None:
        client = self.clients.get(user_id)
        if client is None:
            return None
        handle = self._handle(client, peer_id)
        return None if handle is None else client.pcs.get(handle)

    @staticmethod
    def _handle(client: SimClient, peer_id: str) -> int | None:
        """The machine's current connection handle for ``peer_id``."""
        negotiation = client.machine.peers.get(peer_id)
        return None if negotiation is None else negotiation.pc

    def _notice(self, user_id: str, peer_id: str, state: str, delay: float) -> None:
        client = self.clients[user_id]
        handle = self._handle(client, peer_id)
        pc = None if handle is None else client.pcs.get(handle)
        if handle is None or pc is None:
            return
        pc.connection_state = state
        self._enqueue(
            ("notice", (user_id, handle)), ConnectionStateChanged(pc=handle, state=state), delay
        )

    def _run_op(self, key: tuple[str, int], action: PeerConnectionAction) -> None:
        user_id, handle = key
        client = self.clients[user_id]
        pc = client.pcs.get(handle)
        if pc is None:
            return
        result: ClientEvent | None = None
        try:
            if isinstance(action, CreateOffer | CreateAnswer):
                if isinstance(action, CreateOffer):
                    description = pc.create_offer(ice_restart=action.ice_restart)
                else:
                    description = pc.create_answer()
                pc.set_local_description(description)
                result = LocalDescriptionCreated(pc=handle, description=description)
            elif isinstance(action, SetRemoteDescription):
                pc.set_remote_description(action.description)
                result = RemoteDescriptionApplied(pc=handle)
            elif isinstance(action, RollbackLocalDescription):
                pc.rollback()
            elif isinstance(action, AddIceCandidate):
                pc.add_ice_candidate(action.candidate)
        except (InvalidStateError, OperationError) as exc:
            self.model_errors.append(f"{user_id} pc {handle} {type(action).__name__}: {exc}")
            result = OperationFailed(pc=handle, operation=type(action).__name__, error=str(exc))
        if result is not None:
            self._client_event(client, result)
        for candidate in pc.take_gathered():
            self._enqueue(
                ("notice", key),
                IceCandidateGathered(pc=handle, candidate=candidate),
                self._delay(self.op_latency),
            )
        self._check_pair(user_id, action.peer_id)

    def _run_notice(self, key: tuple[str, int], event: ClientEvent) -> None:
        user_id, handle = key
        client = self.clients[user_id]
        if handle in client.pcs:
            self._client_event(client, event)

    def _check_pair(self, a: str, b: str) -> None:
        """Start ICE between the current connections of ``a`` and ``b`` if both are
        negotiated with each other's credentials."""
        pa, pb = self._current_pc(a, b), self._current_pc(b, a)
        if pa is None or pb is None or not (pa.ice_ready() and pb.ice_ready()):
            return
        la, ra = pa.credentials()
        lb, rb = pb.credentials()
        if ra != lb or rb != la:
            return
        if not any(c.startswith(f"{lb}#") for c in pa.remote_candidates) or not any(
            c.startswith(f"{la}#") for c in pb.remote_candidates
        ):
            return
        blocked = frozenset((a, b)) in self.blocked
        for x, y, pc in ((a, b, pa), (b, a, pb)):
            if blocked and pc.connection_state not in ("failed", "checking-blocked"):
                pc.connection_state = "checking-blocked"
                self._notice(x, y, "failed", self.fail_after)
            elif not blocked and pc.connection_state != "connected":
                self._notice(x, y, "connected", self.ice_latency)
