"""Public testing kit: helpers for property-testing code built on sansio-signal.

:class:`RelayHarness` drives a :class:`~sansio_signal.RelayMachine` by hand with a
virtual clock and collects what each connection would receive.
"""

from .relay import RelayHarness

__all__ = ["RelayHarness"]
