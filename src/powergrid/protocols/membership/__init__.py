"""Heartbeat membership: who is in a group, as its leader announces it.

Theory of operation. One :class:`MembershipMachine` per group the node is in
(:mod:`.machine` has the protocol's whole theory: leader, scaling, member,
joining, fencing, leadership). The package is split by what changes together:

- :mod:`.config`: :class:`MembershipConfig`, the timeouts and how they scale;
- :mod:`.messages`: the commands :class:`Join`, :class:`EndListen`, :class:`Leave`, the
  notifications :class:`MemberSuspected`, :class:`MemberRemoved`,
  :class:`Left`, and :class:`MembershipStats`;
- :mod:`.view`: a view as ViewPart datagrams and back, view id comparisons;
- :mod:`.roles` and :mod:`.leader`: the roles (idle, joining, member,
  leader), each an object with its own handlers and deadline;
- :mod:`.machine`: the router that keeps what outlives a role.

Rule numbers in the code (L1-L9, M1-M11, E1-E4, V1, I1) are those of
docs/protocols/membership.md.
"""

from powergrid.protocols.membership.config import LEADER_TICKS, SUSPECT_TICKS, MembershipConfig
from powergrid.protocols.membership.machine import MembershipMachine
from powergrid.protocols.membership.messages import (
    EndListen,
    Join,
    Leave,
    Left,
    MemberRemoved,
    MembershipStats,
    MemberSuspected,
    RemovalReason,
)
from powergrid.protocols.membership.view import (
    MAX_VIEW_MEMBERS,
    VIEW_ENTRIES_PER_PART,
    view_parts,
)

__all__ = [
    "LEADER_TICKS",
    "MAX_VIEW_MEMBERS",
    "SUSPECT_TICKS",
    "VIEW_ENTRIES_PER_PART",
    "EndListen",
    "Join",
    "Leave",
    "Left",
    "MemberRemoved",
    "MemberSuspected",
    "MembershipConfig",
    "MembershipMachine",
    "MembershipStats",
    "RemovalReason",
    "view_parts",
]
