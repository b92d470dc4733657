"""The machines' dispatch tables (powergrid._dispatch): per class, overrides honoured."""

from __future__ import annotations

from typing import Any

import pytest

from powergrid.protocols.election import ElectionMachine
from powergrid.protocols.market.broker import BrokerMachine
from powergrid.protocols.market.client import ClientMachine
from powergrid.protocols.market.lead import LeadBrokerMachine
from powergrid.protocols.membership import MembershipMachine
from powergrid.protocols.multicast import MulticastMachine
from powergrid.protocols.unicast import UnicastMachine

MACHINES = [
    MembershipMachine,
    ElectionMachine,
    UnicastMachine,
    MulticastMachine,
    ClientMachine,
    BrokerMachine,
    LeadBrokerMachine,
]


@pytest.mark.parametrize("cls", MACHINES, ids=lambda c: c.__name__)
def test_tables_hold_the_class_functions_and_a_subclass_gets_its_overrides(cls: Any) -> None:
    """Every entry is the function of the class; a subclass that overrides one handler gets
    a table of its own with the override, and the base class's table is untouched."""
    tables = [t for t in ("_on_event", "_on_message") if t in vars(cls)]
    assert "_on_event" in tables
    for table in tables:
        for func in getattr(cls, table).values():
            assert getattr(cls, func.__name__) is func
    kind, base = next(iter(cls._on_event.items()))

    def override(self: Any, *args: Any) -> list[Any]:
        return ["overridden"]

    sub = type("Sub", (cls,), {base.__name__: override})
    assert sub._on_event[kind] is override
    assert cls._on_event[kind] is base
    assert all(
        getattr(sub, t)[k] is getattr(cls, t)[k]
        for t in tables
        for k in getattr(cls, t)
        if (t, k) != ("_on_event", kind)
    )
