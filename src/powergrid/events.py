"""The machine contract: shared inputs, shared actions, views, and the endpoint a transport drives.

Theory of operation
-------------------
Every protocol in ``powergrid`` is a *machine*: a plain object with

* ``handle(event, now) -> list[action]``: the only way in. ``now`` is float
  seconds on the caller's monotonic clock; a machine never reads a clock.
* ``next_deadline() -> float | None``: when the machine next wants
  :class:`DeadlineReached`, or None. The driver wakes it then (or later) and
  the machine does whatever is due; waking it early is harmless.
* read-only properties for its state.

Inputs are *events* named for what happened (:class:`Received`,
:class:`DeadlineReached`, a local command); outputs are *actions* named as
commands (:class:`Send`, :class:`Multicast`, a notification). Both are frozen,
slotted, keyword-only ``attrs`` classes. A machine works for one group; the
node that composes machines knows which group and adds the datagram header.

A peer can never make ``handle`` raise: a stale, duplicate or hostile message
is dropped and counted in the machine's ``stats``. Local misuse (a bad command)
raises a :class:`~powergrid.errors.LocalError` at once.

A *node* (``powergrid.node``) composes the machines of one process and speaks
bytes: it is an :class:`Endpoint`, which is all a transport needs. Its outputs
are :data:`Output`: datagrams to send (:class:`Transmit`,
:class:`TransmitGroup`), multicast subscriptions (:class:`JoinGroup`,
:class:`LeaveGroup`), and notifications for the application, which the
transport passes on untouched.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import attrs

from powergrid.types import Epoch, GroupId, Incarnation, NodeId, format_node, node_field
from powergrid.wire import Message

__all__ = [
    "DeadlineReached",
    "Endpoint",
    "JoinGroup",
    "LeaderElected",
    "LeaderLost",
    "LeaveGroup",
    "Member",
    "MemberJoined",
    "MemberLeft",
    "Multicast",
    "MulticastReliable",
    "Output",
    "Received",
    "Send",
    "SendReliable",
    "Transmit",
    "TransmitGroup",
    "View",
    "ViewChanged",
]


# ----------------------------------------------------------------- inputs


@attrs.frozen(kw_only=True)
class Received:
    """A decoded message arrived from ``sender`` (in its ``incarnation``)."""

    sender: NodeId
    incarnation: Incarnation
    message: Message


@attrs.frozen(kw_only=True)
class DeadlineReached:
    """The time a machine asked for with ``next_deadline()`` has come."""


# ---------------------------------------------------------------- actions


@attrs.frozen(kw_only=True)
class Send:
    """Send ``message`` to node ``to`` as one datagram (unreliably)."""

    to: NodeId
    message: Message


@attrs.frozen(kw_only=True)
class Multicast:
    """Send ``message`` to the machine's group as one datagram (unreliably)."""

    message: Message


@attrs.frozen(kw_only=True)
class SendReliable:
    """Send ``message`` to node ``to`` through the reliable unicast channel.

    The node routes it through ``powergrid.protocols.unicast`` (as an inner message of
    :class:`~powergrid.wire.UData`); the receiving node decodes it and hands it
    to its machines as a :class:`Received` from the original sender.
    """

    to: NodeId
    message: Message


@attrs.frozen(kw_only=True)
class MulticastReliable:
    """Multicast ``message`` to the machine's group through reliable ordered multicast."""

    message: Message


# ------------------------------------------------ notifications between machines
# The node passes these from the machine that emits them to the machines that
# consume them, and on to the app.


@attrs.frozen(kw_only=True)
class ViewChanged:
    """Membership installed ``view`` (emitted by membership; input to multicast and election)."""

    view: View


@attrs.frozen(kw_only=True)
class MemberJoined:
    """Notification: ``node`` (life ``incarnation``) is in ``group``'s view from now on.

    Emitted by the node right after each :class:`ViewChanged`, for every member
    it lists that the group's previous view did not (all other members, for
    the first view this node installs), in node id order; this node itself is
    never reported. ``str`` reads ``joined group 1: 127.0.0.1:47001 (life 9)``.
    """

    group: GroupId
    node: NodeId = node_field()
    incarnation: Incarnation

    def __str__(self) -> str:
        return f"joined group {self.group}: {format_node(self.node)} (life {self.incarnation})"


@attrs.frozen(kw_only=True)
class MemberLeft:
    """Notification: ``node`` is no longer in ``group``'s view.

    ``reason`` is ``"left"`` (a graceful leave), ``"crashed"`` (removed after
    silence), ``"replaced"`` (a newer life of the same address) or
    ``"unknown"`` (the view moved on without saying why, e.g. a partition
    merged), from the membership's ``MemberRemoved`` before the view. Emitted
    by the node right after the :class:`ViewChanged` (after the view's
    :class:`MemberJoined`), in node id order; this node itself is never reported.
    """

    group: GroupId
    node: NodeId = node_field()
    reason: Literal["left", "crashed", "replaced", "unknown"]

    def __str__(self) -> str:
        return f"left group {self.group}: {format_node(self.node)} ({self.reason})"


@attrs.frozen(kw_only=True)
class LeaderLost:
    """Membership stopped hearing ``leader`` of ``group`` (epoch ``epoch``); input to election."""

    group: GroupId
    leader: NodeId = node_field()
    epoch: Epoch


@attrs.frozen(kw_only=True)
class LeaderElected:
    """Election settled: ``leader`` leads ``group`` in ``epoch``; input to membership and market."""

    group: GroupId
    leader: NodeId = node_field()
    epoch: Epoch


# ------------------------------------------------------------------ views


@attrs.frozen(kw_only=True, order=True)
class Member:
    """One member of a view: who, which life, and what it may become."""

    node: NodeId = node_field()
    incarnation: Incarnation
    rank: int = 0
    broker_capable: bool = False


@attrs.frozen(kw_only=True)
class View:
    """The members of a group as its leader last announced them.

    ``view_id`` only grows within a group; ``leader`` is 0 while there is none;
    ``members`` is sorted by node id and includes the leader.
    """

    group: GroupId
    view_id: int
    leader: NodeId = node_field()
    epoch: Epoch
    members: tuple[Member, ...]

    @property
    def nodes(self) -> tuple[NodeId, ...]:
        """The member ids, sorted."""
        return tuple(m.node for m in self.members)

    def incarnation_of(self, node: NodeId) -> Incarnation | None:
        """The incarnation ``node`` has in this view, or None if it is not a member."""
        for m in self.members:
            if m.node == node:
                return m.incarnation
        return None


_maps_memo: list[Any] = [None, None]
"""The members tuple :func:`member_maps` answered last, and its answer."""


def member_maps(members: tuple[Member, ...]) -> tuple[dict[int, Member], dict[int, int]]:
    """``members`` by node id, and their incarnations by node id: for reading only.

    The answer for the last tuple is kept and given to every caller with the
    same tuple: all members of a group install a view as one tuple of members
    (see :mod:`powergrid.protocols.membership`), so in a simulated data centre the
    machines of every node of a group share these two dicts. A caller that
    needs to change one copies it.
    """
    last = _maps_memo
    if members is last[0]:
        maps: tuple[dict[int, Member], dict[int, int]] = last[1]
        return maps
    maps = {m.node: m for m in members}, {m.node: m.incarnation for m in members}
    last[0], last[1] = members, maps
    return maps


# ------------------------------------------------------- node <-> transport


@attrs.frozen(kw_only=True)
class Transmit:
    """Send ``data`` to the unicast socket of node ``to``."""

    to: NodeId
    data: bytes


@attrs.frozen(kw_only=True)
class TransmitGroup:
    """Send ``data`` to the multicast address of ``group``."""

    group: GroupId
    data: bytes


@attrs.frozen(kw_only=True)
class JoinGroup:
    """Subscribe this node's socket to ``group``'s multicast address."""

    group: GroupId


@attrs.frozen(kw_only=True)
class LeaveGroup:
    """Unsubscribe from ``group``."""

    group: GroupId


Output = object
"""What a node returns: Transmit, TransmitGroup, JoinGroup, LeaveGroup, or a
notification for the app (any other attrs class), which transports pass on."""


class Endpoint(Protocol):
    """What a transport drives: a node, bytes in and bytes out."""

    @property
    def node_id(self) -> NodeId:
        """This endpoint's id (its unicast address)."""

    def start(self, now: float) -> list[Output]:
        """Begin: join groups, announce ourselves."""

    def receive(self, data: bytes, now: float) -> list[Output]:
        """One datagram arrived (unicast or multicast)."""

    def handle_deadline(self, now: float) -> list[Output]:
        """``next_deadline()`` has come."""

    def next_deadline(self) -> float | None:
        """When to call :meth:`handle_deadline` next, or None."""
