"""powergrid: sans-IO group communication for a data-centre smart grid.

Reliable ordered multicast, heartbeat membership, bully election and a power
market, as pure state machines. The simulator (``powergrid.sim``) drives them
over an in-memory network with virtual time or a fault-injecting fuzz network;
transports (``powergrid.transports``) over real UDP multicast with trio.
``import powergrid`` never imports trio.
"""

from powergrid.errors import (
    ConfigError,
    DecodeError,
    LocalError,
    PayloadTooLargeError,
    PowergridError,
    RemoteError,
    UsageError,
)
from powergrid.types import (
    BROKER_GROUP,
    ElectionKey,
    Epoch,
    GroupId,
    Incarnation,
    NodeId,
    Seq,
    format_node,
    node_address,
    node_id,
)

__version__ = "0.1.0"

__all__ = [
    "BROKER_GROUP",
    "ConfigError",
    "DecodeError",
    "ElectionKey",
    "Epoch",
    "GroupId",
    "Incarnation",
    "LocalError",
    "NodeId",
    "PayloadTooLargeError",
    "PowergridError",
    "RemoteError",
    "Seq",
    "UsageError",
    "__version__",
    "format_node",
    "node_address",
    "node_id",
]
