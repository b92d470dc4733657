"""Public fixtures for testing apps and protocols built on powergrid.

* :mod:`powergrid.testing.fakenet`: :class:`FakeNet`, one virtual-time network
  for bare machines (no node, no sockets), with seeded loss, latency,
  duplication, partitions and crashes, and a record of what was delivered.
* :mod:`powergrid.testing.transcript`: scripted multi-node stories whose whole
  transcript is the expected output (``tests/testdata/*.txt``).

See ``docs/testing.md``.
"""

from powergrid.testing.fakenet import (
    Address,
    Conditions,
    Delivery,
    FakeNet,
    Machine,
    Notice,
    Packet,
    Stuck,
)

__all__ = [
    "Address",
    "Conditions",
    "Delivery",
    "FakeNet",
    "Machine",
    "Notice",
    "Packet",
    "Stuck",
]
