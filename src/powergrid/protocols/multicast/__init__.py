"""Reliable multicast: FIFO per origin, exactly once, with repair and a bounded resend buffer.

Theory of operation
-------------------
One :class:`MulticastMachine` per group the node is in. Every member is an
*origin* of its own stream: :class:`Publish` numbers the message (1, 2, ...
per incarnation), delivers it to the local app at once (:class:`Deliver`)
and multicasts a :class:`~powergrid.wire.Data`. Receivers keep, per origin,
the incarnation, the highest sequence number *delivered* and the highest
*seen*.

*Receiving.* A message of a higher incarnation than known resets the
origin's stream (the new life starts at 1); a lower one is stale (dropped,
counted). A life the view does not list (not admitted yet, or forged) is kept
for ``flush_grace`` unless a view lists it by then, and digests never start a
life other than the one the view lists, so a forged incarnation cannot shut out
the real one for good. In-order messages are delivered, then any held successors;
duplicates are dropped and counted; messages ahead of a gap are held, at most
``max_held`` per origin (beyond: the one farthest ahead is dropped, counted in
``held_dropped``, and repaired later). An :class:`~powergrid.wire.Xmit` is handled like the Data
it carries.

*Repair (the resend requester).* A gap waits ``nak_delay`` (reordering
tolerance, 0 by default), then the machine sends ``Nak(origin, incarnation,
first, last)`` to the origin for every missing range within ``max_nak_range``
messages of the delivered point. A fresh gap (a seq no Nak asked for yet) is
asked ``nak_delay`` after it appears; only re-asks of ranges still missing are
paced, at most one round per origin per re-ask interval: four smoothed repair
round trips, within ``nak_interval / 10 .. nak_interval``.
After ``nak_escalate_after`` tries without progress (or at
once if the origin is not in the view) the Nak is multicast to the group with
a ``helper``: only the origin and the helper answer a group Nak, so each
missing message is resent at most twice per round. The helper rotates, one
per group round, through the view's coordinator first, then the other
members in id order (never the requester or the origin), so every holder is
asked in turn. Any member answering a Nak unicasts one ``Xmit`` per message it
holds in the (capped) range, at most ``max_xmit_per_interval`` per requester
per ``nak_interval`` (beyond: counted in ``xmits_rate_limited``).

*Stability.* Every member keeps every delivered message in its resend buffer
until it is stable. Members unicast ``Status`` (per origin: what they
delivered and ``low``, up to where they dropped it as stable) to
the view's leader, the *coordinator*, every ``status_interval`` (with up to
``status_jitter`` of it taken off at random) while they buffer messages,
are behind, or have delivered more of an origin than the coordinator last
declared stable, and are quiet otherwise. The coordinator computes, per origin,
``stable`` = the minimum delivered over the members of its current view (a
member that has not reported the origin's current incarnation holds it where
it is: stable never goes down) and ``highest`` = the maximum seen, and
declares only stable points it found from its view's members (a new
coordinator, or a view admitting a member life, declares 0 until all have
reported: a point from a view without some of today's members is void), and
multicasts ``Stable`` every ``stable_interval`` while anything is unstable,
after any Status, and at once plus ``stable_repeats`` times after a view
change.
On Stable every member drops buffered messages up to ``stable`` and naks if
it is behind ``highest`` (this is how a lost *last* message is found). A
Stable is only taken from the coordinator of the member's own view (same view
id, the leader, its incarnation): one of another view, or any before the first
view, says nothing about what this view's members hold, so it is ignored (an
origin keeps its own messages until its own view finds them stable), except
that a member's Stable of a newer view still tells how far the lives this node
keeps went: it only makes it nak, so a member that lags in membership fetches a
last message before a retired life's grace runs out. Status
and Stable are split into several datagrams when there are many origins.

*Lost history.* Messages dropped as stable in a view that some of today's
members were not in (a partition, a coordinator that restarted or changed)
may be held by nobody now. Before each Stable, with every member's report of
an origin in, the coordinator counts down from the highest delivered through
the members' ``(low, delivered]`` spans (its own included; the origin's, if it
is a member, reaches ``highest``: it drops its own messages only as stable) and
the messages it holds ahead of its own gap; the first message nobody holds is
lost for good, so
it raises the origin's stable point to it, skipping there itself (``skipped``)
and so making every member behind skip too, instead of asking forever. Within
one view nobody drops what a member lacks, so this never skips a message
someone can still resend. Retired lives (see *Restarts*) are counted the same
way, with the reports of every member but their origin, and so are hearsay
lives, of which the coordinator holds nothing. A member that skips to
a stable point also drops what it holds at or below it (``skipped``): the
stream jumps once and goes on after the point, never delivering with gaps in
between. No Stable moves a member's point beyond the highest seq of the origin
it received (or, at the coordinator, the origin reported): a forged or
corrupted digest cannot wedge a sender (``implausible``). The other way
round: a Stable whose ``highest`` for this node's own life is beyond what it
sent (members delivered a forged Data of it, unkeyed) moves its send point
there, up to ``max_nak_range`` ahead, so its next message is not dropped as a
duplicate (``overtaken``, rule 26).

*The origin's hold (rule 28).* While the machine keeps a DEPARTING life (an
origin its view does not list; from the view change itself, before that view's
first digest) and for ``flush_grace`` after the last, it keeps its
own messages buffered even once stable (at most ``max_buffer``): a view without
some of the nodes that receive its stream (itself alone, at worst) finds them stable
at once, and those nodes, back in a view with it, could otherwise only skip them.

*Buffer cap.* If stability stalls, at most ``max_buffer`` messages are
buffered in all: beyond, the oldest message of the origin with the most
buffered messages is dropped (``buffer_overflow``). A member that still
misses it cannot get it from this node. When the coordinator drops one, it
also declares it stable, so members stuck behind it skip it (``skipped``)
instead of asking forever; agreement is lost for those messages.

*Flow control (rule 27).* With ``send_window`` W > 0, at most W of this node's
own messages are unstable (published, not yet declared stable by its view's
coordinator): a flow-controlled :class:`Publish` beyond returns
:class:`WindowFull` and sends nothing; :class:`WindowOpen` follows once a Stable
makes room. Credits follow stability (the minimum delivered over the members), so
a slow member slows the sender; a member that delivered half a window of an
origin beyond its last report reports at once, and the coordinator answers a
Status within ``stable_interval / 8``. The buffer cap evicts nothing under flow
control (the windows bound the buffer).

*Joiners.* For an origin it has no state for, a machine starts after the
``stable`` point of the first Stable (of its own view) that names the origin (naking up to
``highest``), so it never asks for history everyone else has dropped. Data
from such an origin that arrives before is held. Exceptions: seq 1 is always
accepted directly (it starts the stream), and the coordinator, which receives
no Stable, starts an unknown origin at 0 and relies on *lost history* above
to skip what nobody holds any more. Without a coordinator, Data at seq > 1
from an unknown origin is held until one appears.

*Views.* :class:`~powergrid.events.ViewChanged` sets the members and the
coordinator. State of an origin that is not in the view is kept for
``flush_grace`` seconds, so survivors can still fetch its last messages from
holders, then dropped (an origin that comes back in time keeps its state).
What was delivered of a dropped life (after grace, or a retired life at its
end), and its stable point, are remembered (for the last 4096 origins, their
latest 4 lives, each life apart): if that life comes back, its stream resumes
after what was delivered (nothing twice) and the stable point declared stays
the one known, even if another life of the origin was taken meanwhile.

*Restarts.* A newer incarnation of an origin starts a new stream at once, and
the old life is *retired*: kept for ``flush_grace`` (one per origin; from the
restart, or from the last view that admitted a member, who may hold its last
messages: rule 29), its
Xmits delivered, its gaps asked of the group at once, its buffer answering
Naks, its point reported in Status and its ``(stable, highest)`` digested by
the coordinator in Stable (in datagrams of their own: an origin appears once
per datagram), so members that missed the old life's last messages fetch them
from those that delivered them. Then it is dropped whole. A coordinator that
has no state of the past life (it is the restarted origin itself, or it joined,
restarted or took over after that life ended) learns of it only from Status: it
keeps that life's highest reported and the members' reports of it (nothing held
or delivered; stable only where *lost history* finds nobody holds it) as a
retired life from the first such report, so the digest names it all the same;
such a *hearsay* life is dropped when the node stops coordinating.

Guarantees: within one life of each origin, each member delivers the
origin's messages at most once and in order (FIFO per origin); while the
origin, or a member that delivered a message, stays reachable in the view and
nothing overflows (under flow control nothing a live member lacks is evicted),
every member in the view delivers it; the resend buffer
never exceeds ``max_buffer``; a quiet, stable group sends nothing and
``next_deadline()`` is None. Not guaranteed: any order between different
origins (no total or causal order), virtual synchrony (a view change does not
flush, it only keeps departed origins' state for ``flush_grace``), delivery
of messages evicted by the buffer cap (without flow control) or lost with the buffers of a
partition (see *lost history*), history from before a member joined, and the
last messages of a life whose origin restarts that nobody else delivered, or
that are not fetched within ``flush_grace`` of the restart and before the origin
restarts again (one retired life per origin).

Assumptions: datagrams may be lost, duplicated, reordered and delayed but
not corrupted; the node never passes this machine its own datagrams;
incarnations only grow; the view lists the coordinator among its members.

Driving: ``handle(event, now)`` with :class:`Publish`,
:class:`~powergrid.events.Received` (Data, Xmit, Nak, Status, Stable),
:class:`~powergrid.events.ViewChanged` and
:class:`~powergrid.events.DeadlineReached`; ``next_deadline()`` is the
earliest of the Nak, Status, Stable and grace timers. Defaults (seconds):
``nak_delay`` 0, ``nak_interval`` 0.05, ``status_interval`` 0.25,
``stable_interval`` 0.25, ``flush_grace`` 2.0.

Parts
-----
The machine (``_machine.py``) is a router; the protocol's state lives in parts,
each a module with its own theory of operation:

* ``_life.py``: one :class:`~._life.OriginLife` per life of an origin, its
  :class:`~._life.Phase` (live, departing, retired, hearsay, dropped, absent) and
  the transition table, the single source of truth of where a life is;
* ``_lives.py``: the registry of lives by phase, their streams and the resend
  requester (Nak timers), the only code that changes a phase;
* ``_buffer.py``: the resend buffer, its cap and the Xmit rate limit;
* ``_coordinator.py``: the stability coordinator, which exists only while this
  node coordinates (built when it becomes coordinator, dropped when it stops);
* ``_config.py``: the config, the command, the action and the counters.

``next_deadline()`` is the minimum over the parts' deadlines. Rule numbers in
comments and tests are those of ``docs/protocols/multicast.md``.
"""

from powergrid.protocols.multicast._config import (
    MAX_MULTICAST_PAYLOAD,
    STABLE_PER_DATAGRAM,
    STATUS_PER_DATAGRAM,
    Deliver,
    MulticastConfig,
    MulticastStats,
    Publish,
    WindowFull,
    WindowOpen,
)
from powergrid.protocols.multicast._machine import MulticastMachine

__all__ = [
    "MAX_MULTICAST_PAYLOAD",
    "STABLE_PER_DATAGRAM",
    "STATUS_PER_DATAGRAM",
    "Deliver",
    "MulticastConfig",
    "MulticastMachine",
    "MulticastStats",
    "Publish",
    "WindowFull",
    "WindowOpen",
]
