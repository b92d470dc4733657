"""Membership's commands, notifications and counters: what crosses its surface.

Theory of operation. An application (or :mod:`powergrid.node`) drives a
membership machine with two commands, :class:`Join` and :class:`Leave`,
besides the events every machine takes; the machine reports what happened
with :class:`MemberSuspected`, :class:`MemberRemoved` and :class:`Left`
(and the shared :class:`~powergrid.events.ViewChanged` and
:class:`~powergrid.events.LeaderLost`). All are immutable records;
:class:`MembershipStats` are plain counters that only grow.
"""

from __future__ import annotations

from typing import Literal

import attrs

from powergrid.types import GroupId, NodeId, node_field

__all__ = [
    "Join",
    "Leave",
    "Left",
    "MemberRemoved",
    "MemberSuspected",
    "MembershipStats",
    "RemovalReason",
]

RemovalReason = Literal["crashed", "left", "replaced"]

# ----------------------------------------------------------------- events


@attrs.frozen(kw_only=True)
class Join:
    """Command: become a member of the group (retried until admitted).

    ``listen``: a joiner that knows no leader listens ``join_timeout`` for one before
    it reports ``LeaderLost(0, 0)`` (rule M8). False: it reports at once, so its
    election stands now; a live leader answers the Election with its Coordinator (for
    a group that often has no leader when joined: the broker group, joined by a newly
    elected broker at a cold start or after the crash of the lead broker's node).

    ``handle`` raises :class:`~powergrid.errors.UsageError` if the node has
    already joined (or is joining) and has not left since.
    """

    listen: bool = True


@attrs.frozen(kw_only=True)
class EndListen:
    """Command: a joiner still listening for a leader (``Join(listen=True)``, rule M8)
    reports ``LeaderLost(0, 0)`` now, as ``Join(listen=False)`` would have, so its
    election stands now. The node sends it when a new broker that listened learns a
    lead epoch to stand above (from its clients' bids). Nothing happens in any other
    phase, or once a leader is known or the report is made.
    """


@attrs.frozen(kw_only=True)
class Leave:
    """Command: leave the group now (one LeaveNotice is multicast; the machine goes idle).

    ``handle`` raises :class:`~powergrid.errors.UsageError` if the node has not joined.
    """


# ---------------------------------------------------------------- actions


@attrs.frozen(kw_only=True)
class MemberSuspected:
    """The leader stopped hearing ``node`` and is probing it (emitted by the leader only)."""

    group: GroupId
    node: NodeId = node_field()


@attrs.frozen(kw_only=True)
class MemberRemoved:
    """``node`` is no longer a member of ``group``: it ``"crashed"``, ``"left"`` or was
    ``"replaced"`` by a newer incarnation. ``node`` may be this node itself (it was removed)."""

    group: GroupId
    node: NodeId = node_field()
    reason: RemovalReason


@attrs.frozen(kw_only=True)
class Left:
    """This node left ``group`` (answer to :class:`Leave`); the machine is idle."""

    group: GroupId


# ------------------------------------------------------------------ stats


@attrs.define
class MembershipStats:
    """Counters, all since the machine was made."""

    heartbeats_sent: int = 0
    acks_sent: int = 0
    """HeartbeatAcks sent (as a member)."""
    acks_received: int = 0
    """HeartbeatAcks accepted (as the leader)."""
    probes_sent: int = 0
    """Probes sent by the leader, direct and indirect."""
    probe_acks_sent: int = 0
    """ProbeAcks sent as a probe's target."""
    probes_relayed: int = 0
    """Probes and ProbeAcks relayed as a helper of an indirect probe."""
    suspected: int = 0
    false_suspicions_cleared: int = 0
    """Suspicions ended by an answer of the suspect."""
    removed: int = 0
    """MemberRemoved emitted (as leader or member)."""
    views_installed: int = 0
    view_parts_sent: int = 0
    view_requests_sent: int = 0
    view_requests_answered: int = 0
    joins_sent: int = 0
    leader_lost_reported: int = 0
    stale_epoch: int = 0
    """Messages or LeaderElected of an older epoch than the one followed (fencing)."""
    stale_incarnation: int = 0
    """Messages from an older incarnation of a node than the one in the view."""
    conflicting_leader: int = 0
    """Heartbeats or views from another leader of the epoch already followed."""
    twin_leaders_resolved: int = 0
    """LeaderElected naming another leader of the epoch already followed (then followed)."""
    leader_restarts: int = 0
    """The followed leader came back in a higher incarnation in the same epoch (followed)."""
    dropped_not_leader: int = 0
    """Leader-bound messages (join, ack, view request) received while not leading."""
    dropped_not_member: int = 0
    """Acks, view requests or leaves from a node (or incarnation) not in the leader's view."""
    dropped_old_view: int = 0
    """View parts of a view no newer than the one installed, or of an abandoned assembly."""
    dropped_bad_view: int = 0
    """Assembled views that do not list their own leader or are not sorted across parts."""
    dropped_inactive: int = 0
    """Messages received while idle (before Join or after Leave)."""
    dropped_own: int = 0
    """Messages from this node's own id (multicast loopback or an older life)."""
    dropped_probe: int = 0
    """Probes or ProbeAcks that are not ours to answer or relay."""
    late_probe_acks: int = 0
    """ProbeAcks that match no current suspicion."""
    duplicate_joins: int = 0
    """Join requests from a node already in the view (answered with the view)."""
    dropped_full: int = 0
    """Join requests from new nodes refused because the view's entries reach MAX_VIEW_MEMBERS."""
    unexpected: int = 0
    """Received messages that are not membership messages."""
