"""The power market: bids, one-pass clearing, and the client, broker and lead-broker machines.

See ``docs/protocols/market.md``. :mod:`~powergrid.protocols.market.bids` holds the
values (bids, the price grid), :mod:`~powergrid.protocols.market.clearing` the pure
clearing functions, and one module per machine: :mod:`~powergrid.protocols.market.client`,
:mod:`~powergrid.protocols.market.broker`, :mod:`~powergrid.protocols.market.lead`
(the broker and the lead send each round's multicasts twice:
:mod:`~powergrid.protocols.market.repeat`).
"""

from powergrid.protocols.market.bids import (
    MAX_CORNERS,
    MAX_GRID_POINTS,
    MAX_PRIORITY,
    Bid,
    Corner,
    Grid,
)
from powergrid.protocols.market.broker import BrokerConfig, BrokerMachine, BrokerStats, CapHeld
from powergrid.protocols.market.clearing import (
    FILL_ONE,
    FLOORS_CUT,
    ClearingResult,
    Regime,
    Totals,
    aggregate,
    aggregate_ladders,
    allocate,
    budget,
    clear,
    combine,
    totals_from_message,
    totals_to_message,
)
from powergrid.protocols.market.client import (
    AllocationChanged,
    BidChanged,
    ClientConfig,
    ClientMachine,
    ClientStats,
    PriceUpdated,
)
from powergrid.protocols.market.lead import (
    MAX_CLEARING_ENTRIES,
    LeadBrokerMachine,
    LeadConfig,
    LeadStats,
    MarketCleared,
    SteppedDown,
    SupplyChanged,
)

__all__ = [
    "FILL_ONE",
    "FLOORS_CUT",
    "MAX_CLEARING_ENTRIES",
    "MAX_CORNERS",
    "MAX_GRID_POINTS",
    "MAX_PRIORITY",
    "AllocationChanged",
    "Bid",
    "BidChanged",
    "BrokerConfig",
    "BrokerMachine",
    "BrokerStats",
    "CapHeld",
    "ClearingResult",
    "ClientConfig",
    "ClientMachine",
    "ClientStats",
    "Corner",
    "Grid",
    "LeadBrokerMachine",
    "LeadConfig",
    "LeadStats",
    "MarketCleared",
    "PriceUpdated",
    "Regime",
    "SteppedDown",
    "SupplyChanged",
    "Totals",
    "aggregate",
    "aggregate_ladders",
    "allocate",
    "budget",
    "clear",
    "combine",
    "totals_from_message",
    "totals_to_message",
]
