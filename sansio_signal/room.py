"""The client's view of its room, built only from the server's membership frames.

The server sends the joiner one ``user-joined-room`` for itself, carrying
``existingParticipants`` (everyone there before it), then one ``user-joined-room`` or
``user-left-room`` per later change. Replaying those frames gives the room's members
exactly; :class:`RoomView` is that replay, and nothing else ever changes it.
"""

from __future__ import annotations

from .errors import RemoteProtocolError
from .wire import UserJoinedRoom, UserLeftRoom

DEFAULT_MAX_MEMBERS = 64
"""The most other members a room view takes (the server's default room size is 32):
a server that lists more is lying, and every member costs a peer connection."""


class RoomView:
    """Who else is in our room (we are not listed), at most ``max_members`` of them."""

    def __init__(
        self, our_id: str, joined: UserJoinedRoom, max_members: int = DEFAULT_MAX_MEMBERS
    ) -> None:
        if joined.user_id != our_id:
            raise RemoteProtocolError(
                f"a room view starts from our own join, not {joined.user_id!r}'s"
            )
        if our_id in joined.existing_participants:
            raise RemoteProtocolError("existingParticipants lists the joiner itself")
        if len(set(joined.existing_participants)) != len(joined.existing_participants):
            raise RemoteProtocolError("existingParticipants lists a member twice")
        if len(joined.existing_participants) > max_members:
            raise RemoteProtocolError(
                f"existingParticipants lists {len(joined.existing_participants)} members; "
                f"we take at most {max_members}"
            )
        self.max_members = max_members
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
            if len(self._members) >= self.max_members:
                raise RemoteProtocolError(
                    f"{frame.user_id!r} would be member {len(self._members) + 1}; we take "
                    f"at most {self.max_members}"
                )
            self._members.append(frame.user_id)
        else:
            if frame.user_id not in self._members:
                raise RemoteProtocolError(f"{frame.user_id!r} left but was not here")
            self._members.remove(frame.user_id)
