"""Public testing kit: property-test code built on sansio-signal without sockets.

- :class:`RelayHarness` drives a :class:`~sansio_signal.RelayMachine` by hand with a
  virtual clock and collects what each connection would receive.
- :class:`ModelPeerConnection` models RTCPeerConnection's JSEP signaling states and
  raises :class:`InvalidStateError` wherever the spec (or aiortc) would.
- :class:`SimNetwork` wires one relay machine and N client machines with model peer
  connections on a virtual clock, with controllable delays, orderings, loss,
  duplication, ICE failures and disconnects.
"""

from .model import InvalidStateError, ModelPeerConnection, OperationError
from .relay import RelayHarness, counting_tokens
from .sim import SimClient, SimNetwork, SplitMix64

__all__ = [
    "InvalidStateError",
    "ModelPeerConnection",
    "OperationError",
    "RelayHarness",
    "SimClient",
    "SimNetwork",
    "SplitMix64",
    "counting_tokens",
]
