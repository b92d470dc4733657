"""Real-I/O drivers of a :class:`~powergrid.node.Node`: :mod:`.trio_udp` (UDP
multicast with trio). The virtual-time networks live in :mod:`powergrid.sim`.
"""
