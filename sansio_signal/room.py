"""The client's view of its room, built only from the server's membership frames.

The server sends the joiner one ``user-joined-room`` for itself, carrying
``existingParticipants`` (everyone there before it), then one ``user-joined-room`` or
``user-left-room`` per later change. Replaying those frames gives the room's members
exactly; :class:`RoomView` is that replay, and nothing else ever changes it.
"""

from __future__ import annotations

from .errors import RemoteProtocolError
from .wire import UserJoinedRoom, UserLeftRoom


class RoomView:
    """Who else is in our room (we are not listed)."""

    def __init__(self, our_id: str, joined: UserJoinedRoom) -> None:
        if joined.user_id != our_id:
            raise RemoteProtocolError(
                f"a room view starts from our own join, not {joined.user_id!r}'s"
            )
        if our_id in joined.existing_participants:
            raise RemoteProtocolError("existingParticipants lists the joiner itself")
        if len(set(joined.existing_participants)) != len(joined.existing_participants):
            raise RemoteProtocolError("existingParticipants lists a member twice")
        self.our_id = our_id
        self.room_id = joined.room_id
        self._members = list(joined.existing_participants)

    @property
    def members(self) -> tuple[str, ...]:
        """The other members, in the order we learnt of them."""
        return tuple(self._members)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._members

    def apply(self, frame: UserJoinedRoom | UserLeftRoom) -> None:
        """Apply a later membership frame of this room."""
        if frame.room_id != self.room_id:
            raise RemoteProtocolError(
                f"membership frame for room {frame.room_id!r} while in {self.room_id!r}"
            )
        if isinstance(frame, UserJoinedRoom):
            if frame.user_id == self.our_id or frame.user_id in self._members:
                raise RemoteProtocolError(f"{frame.user_id!r} joined twice")
            self._members.append(frame.user_id)
        else:
            if frame.user_id not in self._members:
                raise RemoteProtocolError(f"{frame.user_id!r} left but was not here")
            self._members.remove(frame.user_id)
