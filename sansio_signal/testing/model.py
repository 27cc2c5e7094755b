"""A model of RTCPeerConnection's JSEP signaling states, strict where it matters.

:class:`ModelPeerConnection` follows the W3C state table for ``signalingState``
(``stable``, ``have-local-offer``, ``have-remote-offer``, ``closed``) and raises
:class:`InvalidStateError` wherever a browser or aiortc would refuse the call — and in
two places where aiortc silently misbehaves instead, so that tests catch what would be a
silent bug there:

- ``add_ice_candidate`` before a remote description raises (aiortc drops the
  candidate with a log line; browsers raise);
- ``rollback`` without rollback support raises (aiortc ignores it and corrupts its
  state).

Descriptions are small strings the model can read back: ``model v=N ufrag=U cands=A,B eoc``.
An implementation without trickle puts every candidate (and ``eoc``) in the
description; one with trickle leaves them out and hands them over through
:meth:`ModelPeerConnection.take_gathered` after ``set_local_description``.
Connectivity is decided by :class:`~.sim.SimNetwork` from :meth:`ice_ready`.
"""

from __future__ import annotations

from ..wire import IceCandidate, SessionDescription


class InvalidStateError(Exception):
    """The call is not allowed in the connection's current signaling state."""


class OperationError(Exception):
    """The call is malformed (an unreadable description, a bad candidate)."""


def _parse(sdp: str) -> tuple[str, list[str], bool]:
    parts = sdp.split()
    if not parts or parts[0] != "model":
        raise OperationError(f"not a model description: {sdp[:40]!r}")
    ufrag, cands, eoc = "", [], False
    for part in parts[1:]:
        if part.startswith("ufrag="):
            ufrag = part[6:]
        elif part.startswith("cands="):
            cands = [c for c in part[6:].split(",") if c]
        elif part == "eoc":
            eoc = True
    if not ufrag:
        raise OperationError("description without ufrag")
    return ufrag, cands, eoc


class ModelPeerConnection:
    """A JSEP model; ``name`` makes its ICE credentials unique in a simulation."""

    def __init__(self, name: str, *, rollback: bool, trickle: bool, candidates: int = 2) -> None:
        self.name = name
        self.rollback_supported = rollback
        self.trickle = trickle
        self.candidates = candidates
        self.signaling_state = "stable"
        self.generation = 0
        self.local_ufrag = f"{name}.g0"
        self.current_local: SessionDescription | None = None
        self.current_remote: SessionDescription | None = None
        self.pending_local: SessionDescription | None = None
        self.pending_remote: SessionDescription | None = None
        self.remote_ufrag: str | None = None
        self.remote_candidates: set[str] = set()
        self.remote_ended = False
        self._gathered: list[IceCandidate | None] = []
        self._gathered_for: str | None = None
        self.connection_state = "new"
        self.ops = 0
        self.version = 0

    # ------------------------------------------------------------------ helpers

    def _check_open(self, what: str) -> None:
        if self.signaling_state == "closed":
            raise InvalidStateError(f"{what}: the connection is closed")

    def _describe(self, kind: str) -> SessionDescription:
        # Like the session version of a real SDP's o= line: every new description of
        # this connection differs from the one before, even when nothing else changed.
        self.version += 1
        body = f"model v={self.version} ufrag={self.local_ufrag}"
        if not self.trickle:
            cands = ",".join(f"{self.local_ufrag}#{i}" for i in range(self.candidates))
            body += f" cands={cands} eoc"
        return SessionDescription(type=kind, sdp=body)

    def _candidate(self, i: int) -> IceCandidate:
        return IceCandidate(
            candidate=f"candidate:{self.local_ufrag}#{i}", sdp_mid="0", sdp_mline_index=0
        )

    def _apply_remote(self, description: SessionDescription) -> None:
        ufrag, cands, eoc = _parse(description.sdp)
        if ufrag != self.remote_ufrag:
            self.remote_ufrag = ufrag
            self.remote_candidates = set()
            self.remote_ended = False
        self.remote_candidates |= set(cands)
        self.remote_ended = self.remote_ended or eoc

    # ------------------------------------------------------------------ JSEP

    def create_offer(self, *, ice_restart: bool = False) -> SessionDescription:
        """``createOffer``: allowed in ``stable`` and ``have-local-offer``."""
        self._check_open("createOffer")
        if self.signaling_state not in ("stable", "have-local-offer"):
            raise InvalidStateError(
                f'Cannot create an offer in signaling state "{self.signaling_state}"'
            )
        if ice_restart:
            self.generation += 1
            self.local_ufrag = f"{self.name}.g{self.generation}"
        return self._describe("offer")

    def create_answer(self) -> SessionDescription:
        """``createAnswer``: only in ``have-remote-offer``."""
        self._check_open("createAnswer")
        if self.signaling_state != "have-remote-offer":
            raise InvalidStateError(
                f'Cannot create an answer in signaling state "{self.signaling_state}"'
            )
        assert self.pending_remote is not None
        remote_ufrag, _, _ = _parse(self.pending_remote.sdp)
        if self.current_remote is not None and remote_ufrag != self.remote_ufrag_of_current():
            self.generation += 1  # the remote restarted ICE: we restart too
            self.local_ufrag = f"{self.name}.g{self.generation}"
        return self._describe("answer")

    def remote_ufrag_of_current(self) -> str | None:
        """The ICE ufrag of the current remote description."""
        return None if self.current_remote is None else _parse(self.current_remote.sdp)[0]

    def set_local_description(self, description: SessionDescription) -> None:
        """``setLocalDescription`` for an offer or an answer."""
        self._check_open("setLocalDescription")
        _parse(description.sdp)
        if description.type == "offer":
            if self.signaling_state not in ("stable", "have-local-offer"):
                raise InvalidStateError(
                    f'Cannot set local offer in signaling state "{self.signaling_state}"'
                )
            self.pending_local = description
            self.signaling_state = "have-local-offer"
        elif description.type == "answer":
            if self.signaling_state != "have-remote-offer":
                raise InvalidStateError(
                    f'Cannot set local answer in signaling state "{self.signaling_state}"'
                )
            assert self.pending_remote is not None
            self.current_local, self.pending_local = description, None
            self.current_remote, self.pending_remote = self.pending_remote, None
            self.signaling_state = "stable"
        else:
            raise OperationError(f"unknown description type {description.type!r}")
        if self.trickle and self.local_ufrag != self._gathered_for:
            # Gathering runs once per ICE generation (first description, ICE restart).
            self._gathered_for = self.local_ufrag
            self._gathered = [self._candidate(i) for i in range(self.candidates)]
            self._gathered.append(None)

    def set_remote_description(self, description: SessionDescription) -> None:
        """``setRemoteDescription`` for an offer or an answer (no implicit rollback)."""
        self._check_open("setRemoteDescription")
        if description.type == "offer":
            if self.signaling_state not in ("stable", "have-remote-offer"):
                raise InvalidStateError(
                    f'Cannot handle offer in signaling state "{self.signaling_state}"'
                )
            self._apply_remote(description)
            self.pending_remote = description
            self.signaling_state = "have-remote-offer"
        elif description.type == "answer":
            if self.signaling_state != "have-local-offer":
                raise InvalidStateError(
                    f'Cannot handle answer in signaling state "{self.signaling_state}"'
                )
            self._apply_remote(description)
            self.current_remote = description
            self.current_local, self.pending_local = self.pending_local, None
            self.signaling_state = "stable"
        else:
            raise OperationError(f"unknown description type {description.type!r}")

    def rollback(self) -> None:
        """``setLocalDescription({type: "rollback"})``."""
        self._check_open("rollback")
        if not self.rollback_supported:
            raise InvalidStateError("this implementation cannot roll back")
        if self.signaling_state == "stable":
            raise InvalidStateError('Cannot roll back in signaling state "stable"')
        if self.signaling_state == "have-remote-offer" and self.current_remote is not None:
            self.remote_ufrag = self.remote_ufrag_of_current()
        self.pending_local = self.pending_remote = None
        self.signaling_state = "stable"
        if self.current_local is not None:  # an ICE restart in the offer is undone too
            self.local_ufrag = _parse(self.current_local.sdp)[0]
        self._gathered = []

    def add_ice_candidate(self, candidate: IceCandidate | None) -> None:
        """``addIceCandidate``; ``None`` or ``""`` is end-of-candidates."""
        self._check_open("addIceCandidate")
        if self.current_remote is None and self.pending_remote is None:
            raise InvalidStateError("addIceCandidate before any remote description")
        if self.remote_ended:
            raise InvalidStateError("addIceCandidate after end-of-candidates")
        if candidate is None or candidate.candidate == "":
            self.remote_ended = True
            return
        text = candidate.candidate.removeprefix("candidate:")
        ufrag = text.rpartition("#")[0]
        if ufrag != self.remote_ufrag:
            raise OperationError(f"candidate {text!r} does not match ufrag {self.remote_ufrag}")
        self.remote_candidates.add(text)

    def close(self) -> None:
        """``close()``: final."""
        self.signaling_state = "closed"
        self.connection_state = "closed"

    # ------------------------------------------------------------------ for the simulator

    def take_gathered(self) -> list[IceCandidate | None]:
        """Candidates gathered by the last ``set_local_description`` (trickle only)."""
        gathered, self._gathered = self._gathered, []
        return gathered

    def ice_ready(self) -> bool:
        """Negotiated, with at least one remote candidate of the current remote ufrag."""
        return (
            self.signaling_state == "stable"
            and self.current_local is not None
            and self.current_remote is not None
            and bool(self.remote_candidates)
        )

    def credentials(self) -> tuple[str, str | None]:
        """``(local ufrag, remote ufrag)`` of the current descriptions."""
        local = None if self.current_local is None else _parse(self.current_local.sdp)[0]
        return local or self.local_ufrag, self.remote_ufrag_of_current()
