"""powergrid: sans-IO group communication for a data-centre smart grid.

Reliable ordered multicast, heartbeat membership, bully election and a power
market, as pure state machines. The simulator (``powergrid.sim``) drives them
over an in-memory network with virtual time or a fault-injecting fuzz network;
transports (``powergrid.transports``) over real UDP multicast with trio or asyncio.

What an app needs is here (see docs/api.md): the configs (:class:`NodeConfig`,
:class:`UdpConfig`), :class:`Bid`, the notifications a node gives its app,
the errors, and the transports' ``run_node`` (trio) and ``run_node_asyncio``
(asyncio). ``import powergrid`` imports neither trio nor asyncio: the two
``run_node`` names (and their handle classes) load their transport when first
used (a module-level ``__getattr__``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from powergrid.auth import Keyring
from powergrid.errors import (
    ConfigError,
    DecodeError,
    LocalError,
    PayloadTooLargeError,
    PowergridError,
    RemoteError,
    UsageError,
)
from powergrid.events import (
    LeaderElected,
    LeaderLost,
    Member,
    MemberJoined,
    MemberLeft,
    View,
    ViewChanged,
)
from powergrid.node import MessageDelivered, NodeConfig, NodeStats, UnicastDelivered
from powergrid.protocols.market import AllocationChanged, Bid, PriceUpdated, Regime
from powergrid.protocols.market.lead import MarketCleared
from powergrid.protocols.membership import MemberRemoved, MemberSuspected
from powergrid.protocols.order import OrderConfig
from powergrid.transports._core import UdpConfig, UdpStats, format_event
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

if TYPE_CHECKING:
    from powergrid.transports.asyncio_udp import AsyncioUdpHandle
    from powergrid.transports.asyncio_udp import run_node as run_node_asyncio
    from powergrid.transports.trio_udp import UdpHandle, run_node

__version__ = "0.1.0"

_LAZY = {
    "run_node": ("powergrid.transports.trio_udp", "run_node"),
    "UdpHandle": ("powergrid.transports.trio_udp", "UdpHandle"),
    "run_node_asyncio": ("powergrid.transports.asyncio_udp", "run_node"),
    "AsyncioUdpHandle": ("powergrid.transports.asyncio_udp", "AsyncioUdpHandle"),
}


def __getattr__(name: str) -> Any:
    """Load a transport's names on first use, so that ``import powergrid`` stays loop-free."""
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'powergrid' has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    value = getattr(importlib.import_module(where[0]), where[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "BROKER_GROUP",
    "AllocationChanged",
    "AsyncioUdpHandle",
    "Bid",
    "ConfigError",
    "DecodeError",
    "ElectionKey",
    "Epoch",
    "GroupId",
    "Incarnation",
    "Keyring",
    "LeaderElected",
    "LeaderLost",
    "LocalError",
    "MarketCleared",
    "Member",
    "MemberJoined",
    "MemberLeft",
    "MemberRemoved",
    "MemberSuspected",
    "MessageDelivered",
    "NodeConfig",
    "NodeId",
    "NodeStats",
    "OrderConfig",
    "PayloadTooLargeError",
    "PowergridError",
    "PriceUpdated",
    "Regime",
    "RemoteError",
    "Seq",
    "UdpConfig",
    "UdpHandle",
    "UdpStats",
    "UnicastDelivered",
    "UsageError",
    "View",
    "ViewChanged",
    "__version__",
    "format_event",
    "format_node",
    "node_address",
    "node_id",
    "run_node",
    "run_node_asyncio",
]
