"""Bully election with epochs and fencing: who leads a group.

Theory of operation
-------------------
One :class:`ElectionMachine` per group a node is in; the same class elects the
broker of a cluster and the lead broker of the broker group. Candidates are
compared by :class:`~powergrid.types.ElectionKey`: operator ``rank`` first,
then node id; the higher key wins. Only broker-capable nodes stand; the others
follow announcements.

*Guarantees.* Every leader has an *epoch* (1, 2, ...); a new leader takes the
highest epoch it has seen plus one, so epochs only grow (as serial numbers,
see *Epoch arithmetic*) along any chain of messages. A node never accepts a
leader of an older epoch than the one it follows (*fencing*): a node's
:attr:`~ElectionMachine.epoch` never decreases within one life (it may jump to
a foreign epoch while it has no live leader). Where the nodes that take part
can reach each other within ``answer_timeout``, at most one of them wins a
given epoch, whether or not they know of each other beforehand (the Election
is multicast, and nobody wins without waiting ``answer_timeout`` for an
objection). After the network has been whole and quiet for a bound (see
``docs/protocols/election.md``), every live node follows one leader, the
highest broker-capable key alive (with ``stable_leader``, the leader of the
newest epoch), and elections stop.

*Not guaranteed.* The bully election has no quorum: the two sides of a
partition each elect a leader, and both may take the same epoch number. Such
twins both lead for as long as the cut keeps them apart, however long that
is; they resolve a round trip after a leader's heartbeat and the answering
Coordinator first cross between the sides (rule 7; the lower key steps down
or the higher bumps the epoch, see *Merging*), and not before. A node's
announcement reaches others unreliably; the periodic re-announcement is the
repair.

*Assumptions.* Keys are unique (node ids are). Datagrams may be lost,
duplicated, reordered or delayed, not corrupted. Membership (another machine)
reports a missing leader with :class:`~powergrid.events.LeaderLost` (leader 0,
epoch 0 at bootstrap: "there is no leader") and lists the members with
:class:`~powergrid.events.ViewChanged`.

*Rules* (the classic names are in the tests' docstrings):

1. A broker-capable node told the leader is lost schedules an election: at
   once if it is the highest candidate it knows; otherwise after
   ``stagger`` seconds per known candidate above it (at most ``max_delay``),
   plus up to ``jitter`` drawn from the ``rng``, so that normally only the
   highest acts (one multicast). Membership's bootstrap report
   (``LeaderLost(0, 0)``: it listened ``join_timeout``, at least its
   ``leader_timeout``, and heard no leader at all) starts it so too, with the
   jitter even for the highest (nobody knows anyone yet); a live leader it
   missed (a lone one heartbeats once a second) answers the Election with its
   Coordinator (rule 3). A new broker reports it at once on joining the broker
   group (the node's ``Join(listen=False)``), its election seeded
   (:meth:`ElectionMachine.saw_epoch`) with the lead epoch its client last
   applied. A node that has never followed a leader and is told
   of another loss first listens for ``announce_interval + answer_timeout``,
   so a live leader's periodic announcement finds it before it stands.
2. An election multicasts :class:`~powergrid.wire.Election` to the group,
   so that higher candidates this node does not know of yet (bootstrap, a
   join not yet in the view) hear it too, and waits ``answer_timeout``. If no
   higher key objects in that time (an Answer, or an Election of its own) the
   node wins: it multicasts :class:`~powergrid.wire.Coordinator` with epoch
   *highest seen + 1* and reports :class:`~powergrid.events.LeaderElected`.
   Nobody wins at once, not even the highest candidate it knows: that is what
   keeps two connected candidates that do not know each other from both
   winning one epoch.
3. A candidate that gets an Election from a lower key sends
   :class:`~powergrid.wire.Answer` and starts its own election at once (a
   leader instead sends its Coordinator back, or, if the asker has seen a
   newer epoch than its own, answers and re-asserts with a newer epoch). A
   node electing while its leader is still set stops when that leader's
   Coordinator of the same epoch arrives.
   *Overheard* Elections (from a higher key, or at a node that cannot stand)
   need no answer, but: a candidate that is electing or has an election
   scheduled treats a higher key's Election like an Answer (rule 4); and an
   Election that carries an older epoch than the one this node follows is
   corrected, by the leader with its Coordinator, or, where no live leader is
   followed, with :class:`~powergrid.wire.Fenced`, so the candidate wins above
   every epoch already taken.
4. A node that got an Answer waits ``coordinator_timeout`` for a
   Coordinator, else starts again.
5. Bullying: a broker-capable node that hears a lower key claim leadership in
   an epoch it would accept schedules an election (a leader starts one at
   once, and so re-asserts with a newer epoch after ``answer_timeout``).
6. Fencing: a Coordinator is accepted if its ``(epoch, key)`` is above the
   ``(epoch, key)`` followed (or, with the leader lost, if its epoch is not
   older); otherwise it is refused and counted. A node without a live leader
   that cannot stand answers a refused Coordinator with
   :class:`~powergrid.wire.Fenced`, so the claimant re-asserts with a newer
   epoch; one that can stand does so only to a higher key claiming an older
   epoch than the one it followed, with that epoch (the highest it has seen may
   be forged and foreign to the leader, which would ignore it). A Coordinator
   from a new incarnation of the leader followed means the life we followed
   is gone: its claim is judged as anyone's, and if it is refused a candidate
   schedules an election.
7. The leader re-multicasts its Coordinator every ``announce_interval``, and
   at once (at most once per ``answer_timeout``) when it hears a membership
   :class:`~powergrid.wire.Heartbeat` from another node of its group: a rival
   leader (a twin of its epoch from the other side of a cut) then merges by
   the Coordinator rules within a round trip of the first heartbeat that
   crosses, not only when a periodic Coordinator gets through.
8. A leader told (LeaderLost) that another leader of its epoch or a newer
   one is lost (its membership followed that leader's heartbeats, and now
   nobody heartbeats) starts an election at once and wins above that epoch.
   A follower told of a lost leader of a newer epoch takes that epoch as the
   one it follows.

9. A node that follows nobody and is not electing (a follower, or waiting for
   the Coordinator after an Answer) takes the leader of a view
   membership installs (:class:`~powergrid.events.ViewChanged` names its leader
   and epoch and lists the leader with its incarnation and rank: that leader's
   own view) as if its Coordinator had come, unless the epoch is older than its
   own: a lost copy of the Coordinator does not leave a member of the view
   without a leader until the next announcement.

*Epoch arithmetic.* Epochs are 32 bits and compare as serial numbers within
a window (:func:`~powergrid.types.epoch_newer`): newer means 1 to
``EPOCH_WINDOW`` steps after, modulo 2**32, so there is no top epoch (after
2**32-1 comes 1). Epochs further apart are *foreign*: not noted as seen,
refused by a node with a live leader, followed by one without (a restart, a
lost leader), and between two leaders the key decides. In an honest group
the window never comes into play; it keeps one forged epoch from dragging a
node anywhere, and lets a node that adopted one come back.

*Merging.* After a partition heals, the leaders hear each other's heartbeats and
re-announce (rule 7). A leader that hears a Coordinator with a
higher key and a higher-or-equal epoch steps down and follows it; one with a
higher key but an older epoch is refused (the higher node hears our
announcement and re-asserts with a newer epoch). A leader that hears a lower
key's claim of its own epoch or newer re-asserts with a new epoch; one of an
older epoch is answered at once with our Coordinator.

*Stable leader* (``stable_leader=True``): nobody bullies. A Coordinator wins
over the one followed if its ``(epoch, key)`` is higher, so a restarted
higher node follows the live leader instead of taking over, and after a heal
the leader of the newest epoch stays. Elections still start on LeaderLost.

*Driving.* ``handle(event, now)`` with :class:`~powergrid.events.Received`
(Election, Answer, Coordinator, Fenced, and membership's Heartbeat),
:class:`~powergrid.events.DeadlineReached`,
:class:`~powergrid.events.LeaderLost` and :class:`~powergrid.events.ViewChanged`;
outputs are :class:`~powergrid.events.Send`, :class:`~powergrid.events.Multicast`,
:class:`~powergrid.events.LeaderElected` and :class:`ElectionStarted`.
``next_deadline()`` is the one pending timer: a scheduled election start
(follower), the answer timeout (electing), the coordinator timeout (waiting)
or the next announcement (leader). Every election takes ``answer_timeout``
from its start to the win, and costs one multicast Election plus the
Coordinator. Timeouts (seconds, defaults):
``answer_timeout`` 0.1, ``coordinator_timeout`` 0.5, ``announce_interval``
1.0, ``stagger`` 0.1, ``max_delay`` 1.0, ``jitter`` 0.05.

Candidates are the broker-capable members of the last view, plus every node
heard sending an election message since. The leader reported lost is left
out of them until it is heard again or a new leader is settled (by then
membership has removed it from the view if it is really gone).
"""

from __future__ import annotations

import math
import random
from typing import Literal

import attrs

from powergrid._checks import config_problem, flag, real
from powergrid._dispatch import Dispatching
from powergrid.errors import ConfigError, UsageError
from powergrid.events import (
    DeadlineReached,
    LeaderElected,
    LeaderLost,
    Multicast,
    Received,
    Send,
    ViewChanged,
)
from powergrid.types import (
    MAX_NODE_ID,
    ElectionKey,
    Epoch,
    GroupId,
    NodeId,
    epoch_newer,
    incarnation_newer,
    next_epoch,
)
from powergrid.wire import Answer, Coordinator, Election, Fenced, Heartbeat

__all__ = [
    "MAX_CANDIDATES",
    "ElectionConfig",
    "ElectionMachine",
    "ElectionStarted",
    "ElectionState",
    "ElectionStats",
]

_MIN_RANK = -(2**31)
_MAX_RANK = 2**31 - 1

MAX_CANDIDATES = 65_536
"""Candidates a machine knows at most (the view's, then those heard since): without a key,
election messages from made-up ids used to add one each, without bound, until the next view.
Beyond, a new id's rank is not noted (its message is still handled)."""

ElectionState = Literal["follower", "electing", "waiting", "leader"]
"""``follower``: follows ``leader`` (0 if none), maybe with an election scheduled;
``electing``: sent Elections, waits ``answer_timeout`` for an Answer;
``waiting``: got an Answer, waits ``coordinator_timeout`` for a Coordinator;
``leader``: leads ``epoch``."""


# ----------------------------------------------------------------- config


@attrs.frozen(kw_only=True)
class ElectionConfig:
    """Settings of :class:`ElectionMachine`. Times in seconds.

    Raises :class:`~powergrid.errors.ConfigError` for a value out of range or
    values that contradict each other.
    """

    answer_timeout: float = attrs.field(default=0.1, validator=real)
    """How long a candidate waits for an Answer from a higher key before it wins."""
    coordinator_timeout: float = attrs.field(default=0.5, validator=real)
    """How long a candidate that got an Answer waits for a Coordinator before it starts again."""
    announce_interval: float = attrs.field(default=1.0, validator=real)
    """The leader re-multicasts its Coordinator this often (the repair after loss or a heal)."""
    stagger: float = attrs.field(default=0.1, validator=real)
    """Delay, per known candidate above this node, before it starts an election on LeaderLost."""
    max_delay: float = attrs.field(default=1.0, validator=real)
    """Cap of the position delay (``stagger`` times the candidates above), before jitter."""
    jitter: float = attrs.field(default=0.05, validator=real)
    """Up to this much extra random delay (from the rng) on a scheduled election start."""
    stable_leader: bool = attrs.field(default=False, validator=flag)
    """If True, a returning higher node does not preempt a live leader (no bullying)."""

    def __attrs_post_init__(self) -> None:
        for name in (
            "answer_timeout",
            "coordinator_timeout",
            "announce_interval",
            "stagger",
            "max_delay",
        ):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise config_problem(
                    self, f"{name} is {value}; set it to a finite number of seconds"
                )
        if not math.isfinite(self.jitter) or self.jitter < 0:
            raise config_problem(self, f"jitter is {self.jitter}; set it to 0 or more seconds")
        for name in ("answer_timeout", "announce_interval"):
            value = getattr(self, name)
            if value <= 0:
                raise config_problem(self, f"{name} is {value}; set it above 0 seconds")
        if self.stagger < 0:
            raise config_problem(self, f"stagger is {self.stagger}; set it to 0 or more seconds")
        if self.max_delay < 0:
            raise config_problem(
                self, f"max_delay is {self.max_delay}; set it to 0 or more seconds"
            )
        if self.coordinator_timeout <= self.answer_timeout:
            raise config_problem(
                self,
                f"coordinator_timeout ({self.coordinator_timeout}) is not above "
                f"answer_timeout ({self.answer_timeout}); set coordinator_timeout > "
                "answer_timeout, since the node that answered needs answer_timeout "
                "itself before it can announce",
            )


# ---------------------------------------------------------------- actions


@attrs.frozen(kw_only=True)
class ElectionStarted:
    """This node started (or restarted) an election in ``group``; if it won now it would lead
    ``epoch`` (it takes a newer one if it hears of one before it wins)."""

    group: GroupId
    epoch: Epoch


# ------------------------------------------------------------------ stats


@attrs.define
class ElectionStats:
    """Counters, all since the machine was made."""

    elections_started: int = 0
    """Elections started or restarted by this node (ElectionStarted emitted)."""
    elections_won: int = 0
    """Times this node became leader."""
    messages_sent: int = 0
    """Send and Multicast actions returned (a multicast counts once)."""
    announcements: int = 0
    """Periodic re-announcements (and immediate re-assertions) of a Coordinator."""
    stale_epoch: int = 0
    """Coordinators refused because their (epoch, key) is older than the one followed."""
    stale_lost: int = 0
    """LeaderLost about a leader or epoch this node no longer follows, ignored."""
    bullied: int = 0
    """Lower-key claims of leadership that made this node start or schedule an election."""
    stepped_down: int = 0
    """Times this node stopped leading because it heard a better Coordinator."""
    fenced_sent: int = 0
    """Fenced replies sent to the claimant of a refused Coordinator."""
    foreign_epoch: int = 0
    """Messages whose epoch is *foreign* to the highest seen (neither equal nor within
    :data:`~powergrid.types.EPOCH_WINDOW` of it): handled, but not noted as seen."""
    reasserted: int = 0
    """LeaderLost, while leading, of another leader of our epoch or a newer one (membership
    followed it): this node started an election to lead above that epoch."""
    unexpected: int = 0
    """Messages that do not fit the state or the sender (e.g. an Answer while not electing)."""
    ignored_own: int = 0
    """Our own multicasts echoed back, ignored."""
    leader_restarted: int = 0
    """Coordinators from a new incarnation of the leader followed: its old life was lost."""
    overheard: int = 0
    """Elections multicast by others that this node does not answer (a higher key's, or any
    at a node that cannot stand)."""
    rival_heartbeats: int = 0
    """Membership heartbeats of another node heard while leading (a rival leader, rule 7)."""
    leader_from_view: int = 0
    """Leaders taken from an installed view by a node that followed nobody or waited for a
    Coordinator (rule 9): the Coordinator's copy was missed."""
    candidates_full: int = 0
    """Election messages from new ids whose rank was not noted: MAX_CANDIDATES known."""


# ---------------------------------------------------------------- machine

_Key = tuple[int, int]  # (rank, node): ElectionKey as a plain tuple on the hot path


class ElectionMachine(Dispatching):
    """The bully election of one group at one node (see the module doc).

    Raises :class:`~powergrid.errors.ConfigError` for a node id, rank or group
    out of range.
    """

    __slots__ = (
        "_capable",
        "_cfg",
        "_deadline",
        "_epoch",
        "_group",
        "_key",
        "_leader",
        "_leader_heard",
        "_leader_inc",
        "_leader_rank",
        "_lost",
        "_max_epoch",
        "_me",
        "_rank",
        "_ranks",
        "_rival_reply_after",
        "_rng",
        "_state",
        "_stats",
    )

    _EVENTS = {
        Received: "_on_received",
        DeadlineReached: "_on_deadline",
        LeaderLost: "_on_leader_lost",
        ViewChanged: "_on_view",
    }

    _MESSAGES = {
        Election: "_on_election",
        Answer: "_on_answer",
        Coordinator: "_on_coordinator",
        Fenced: "_on_fenced",
        Heartbeat: "_on_heartbeat",
    }

    def __init__(
        self,
        config: ElectionConfig,
        *,
        me: NodeId,
        rank: int,
        broker_capable: bool,
        group: GroupId,
        rng: random.Random,
    ) -> None:
        if not 0 < me <= MAX_NODE_ID:
            raise ConfigError(f"me is {me}; a node id is 1..2**48-1")
        if not _MIN_RANK <= rank <= _MAX_RANK:
            raise ConfigError(f"rank is {rank}; set it within -2**31..2**31-1 (32 bits)")
        if not 0 <= group < 2**32:
            raise ConfigError(f"group is {group}; set it within 0..2**32-1")
        self._cfg = config
        self._me = me
        self._rank = rank
        self._key: _Key = (rank, me)
        self._capable = broker_capable
        self._group = group
        self._rng = rng
        self._ranks: dict[int, int] = {}  # candidate node -> rank (never me)
        self._lost = 0  # the leader reported lost, left out of candidates until heard again
        self._state: ElectionState = "follower"
        self._leader = 0
        self._leader_rank = 0
        self._leader_inc = 0  # the incarnation of the leader we follow
        self._leader_heard = 0.0  # when the leader we follow last announced itself
        self._epoch = 0  # epoch of the leader followed (kept when it is lost)
        self._max_epoch = 0  # highest epoch seen anywhere
        self._deadline: float | None = None
        self._rival_reply_after = -math.inf  # rule 7: re-announce to a rival at most this often
        self._stats = ElectionStats()

    # ------------------------------------------------------------ surface

    @property
    def leader(self) -> NodeId:
        """The leader this node follows or is (0: none known, or reported lost)."""
        return NodeId(self._leader)

    @property
    def epoch(self) -> Epoch:
        """The epoch of the leader followed or led (kept after it is lost); never decreases."""
        return Epoch(self._epoch)

    @property
    def state(self) -> ElectionState:
        """``"follower"``, ``"electing"``, ``"waiting"`` or ``"leader"``."""
        return self._state

    @property
    def key(self) -> ElectionKey:
        """This node's key: (rank, node id)."""
        return ElectionKey(self._rank, self._me)

    @property
    def stats(self) -> ElectionStats:
        """Counters (mutable, for monitoring)."""
        return self._stats

    def next_deadline(self) -> float | None:
        """When this machine wants :class:`~powergrid.events.DeadlineReached`, or None."""
        return self._deadline

    def handle(self, event: object, now: float) -> list[object]:
        """Process one event at time ``now`` (seconds); returns the actions.

        Raises :class:`~powergrid.errors.UsageError` for an event this machine
        does not take, or a LeaderLost/ViewChanged of another group. Peer
        messages never raise.
        """
        handler = self._on_event.get(type(event))
        if handler is None:
            raise UsageError(f"ElectionMachine does not handle {type(event).__name__} events")
        return handler(self, event, now)

    # ------------------------------------------------------------ inputs

    def _on_received(self, event: Received, now: float) -> list[object]:
        if event.sender == self._me:
            self._stats.ignored_own += 1
            return []
        handler = self._on_message.get(type(event.message))
        if handler is None:
            self._stats.unexpected += 1
            return []
        return handler(self, event.sender, event.incarnation, event.message, now)

    def saw_epoch(self, epoch: int) -> None:
        """Note ``epoch`` of this group, learnt outside it, as seen (rule 2: a win takes the
        highest seen + 1). A node that becomes its cluster's broker tells its new broker-
        group machine the lead epoch of the last price its client applied: were that lead
        gone, a win in that epoch would be a twin of it (its followers, not yet aware it
        is gone, would neither correct nor fence the Election)."""
        if not 0 <= epoch < 2**32:
            raise UsageError(f"epoch is {epoch}; an epoch is 0..2**32-1")
        if epoch:
            self._adopt(epoch)

    def _seen(self, epoch: int) -> None:
        """Note a peer's epoch as the highest seen if it is newer; count a foreign one.

        An epoch more than ``EPOCH_WINDOW`` away from the highest seen is not noted:
        one forged message cannot drag this node's epochs anywhere it likes.
        """
        top = self._max_epoch
        if epoch == top:  # (the common case: every Coordinator of the leader followed)
            return
        if epoch_newer(epoch, top):
            self._max_epoch = epoch
        elif not epoch_newer(top, epoch):
            self._stats.foreign_epoch += 1

    def _adopt(self, epoch: int) -> None:
        """``epoch`` is now known for sure (followed, or reported lost by membership): the
        highest seen is at least it, even if it was foreign, so our next win is above it."""
        if not epoch_newer(self._max_epoch, epoch):
            self._max_epoch = epoch

    def _on_deadline(self, event: DeadlineReached, now: float) -> list[object]:
        if self._deadline is None or now < self._deadline:
            return []  # woken early: harmless
        state = self._state
        if state == "leader":
            self._deadline = now + self._cfg.announce_interval
            return self._announce()
        if state == "electing":
            return self._win(now)
        return self._start(now)  # a scheduled start (follower) or no Coordinator came (waiting)

    def _on_leader_lost(self, event: LeaderLost, now: float) -> list[object]:
        if event.group != self._group:
            raise UsageError(f"LeaderLost of group {event.group} fed to group {self._group}")
        lost, epoch = event.leader, event.epoch
        if self._state == "leader":
            if lost and lost != self._me and not epoch_newer(self._epoch, epoch):
                # Membership followed another leader of our epoch or a newer (or foreign)
                # one, which has gone silent: nobody heartbeats this group. Lead again,
                # above that epoch (rule 8).
                self._stats.reasserted += 1
                self._adopt(epoch)
                return self._start(now)
            self._stats.stale_lost += 1
            return []
        if (
            lost == self._me
            or epoch_newer(self._epoch, epoch)
            or (epoch == self._epoch and self._leader not in (0, lost))
        ):
            self._stats.stale_lost += 1
            return []
        self._adopt(epoch)
        if epoch:
            # Membership followed a leader of ``epoch`` (perhaps newer than ours, heard
            # only in its heartbeats): that is the epoch we followed, so no older one is
            # followed now, or membership and election would follow different leaders.
            self._epoch = epoch
        return self._leader_gone(lost, now)

    def _leader_gone(self, lost: int, now: float) -> list[object]:
        """Rule 1: forget the leader; a candidate schedules an election."""
        if lost:
            self._lost = lost
        self._leader = 0
        if not self._capable or self._state != "follower":
            return []  # a non-candidate waits for a Coordinator; an election is under way
        # A node that never followed a leader listens first (rule 1), unless this is
        # membership's bootstrap report (no leader at all: it listened ``join_timeout``).
        bootstrap = lost == 0 and self._epoch == 0
        return self._schedule(now, listen=self._epoch == 0 and not bootstrap, spread=bootstrap)

    def _on_view(self, event: ViewChanged, now: float) -> list[object]:
        view = event.view
        if view.group != self._group:
            raise UsageError(f"view of group {view.group} fed to group {self._group}")
        me = self._me
        self._ranks = {m.node: m.rank for m in view.members if m.broker_capable and m.node != me}
        if epoch_newer(view.epoch, self._max_epoch):
            self._max_epoch = view.epoch
        lead = view.leader
        if self._leader or lead == me or self._state not in ("follower", "waiting"):
            return []
        # Rule 9: a node that follows nobody (or waits for a Coordinator after an Answer)
        # takes the leader of the view membership installed (its leader's own view: as
        # good as its Coordinator, whose copy this node missed), judged by the Coordinator
        # rules; not an older epoch than ours.
        for m in view.members:
            if m.node == lead and not epoch_newer(self._epoch, view.epoch):
                self._stats.leader_from_view += 1
                return self._claim(lead, m.incarnation, view.epoch, m.rank, now)
        return []

    # ---------------------------------------------------------- messages

    def _on_election(self, sender: int, inc: int, msg: Election, now: float) -> list[object]:
        self._seen(msg.epoch)
        self._learn(sender, msg.rank)
        lower = (msg.rank, sender) < self._key
        state = self._state
        if state == "leader":
            return self._leader_asked(sender, msg.epoch, lower, now)
        if lower and self._capable:  # rule 3: answer, and stand ourselves
            self._stats.messages_sent += 1
            out: list[object] = [
                Send(to=NodeId(sender), message=Answer(self._max_epoch, self._rank))
            ]
            if state == "follower":
                out.extend(self._start(now))
            return out
        self._stats.overheard += 1  # a higher key stands, or we cannot
        out = []
        if self._leader == 0 and epoch_newer(self._epoch, msg.epoch):
            # Nobody live leads our epoch to correct the candidate: tell it we have
            # seen a newer one, so it cannot win an epoch already taken.
            self._stats.fenced_sent += 1
            self._stats.messages_sent += 1
            out.append(Send(to=NodeId(sender), message=Fenced(self._max_epoch)))
        if (
            not lower
            and self._capable
            and (state == "electing" or (state == "follower" and self._deadline is not None))
        ):
            self._state = "waiting"  # a higher key objects: as good as an Answer (rule 4)
            self._deadline = now + self._cfg.coordinator_timeout
        return out

    def _leader_asked(self, sender: int, epoch: int, lower: bool, now: float) -> list[object]:
        """Rule 3 at a leader: an Election from anyone in the group."""
        if epoch_newer(self._epoch, epoch) or (lower and not epoch_newer(epoch, self._epoch)):
            # An older epoch, or a lower key in ours or a foreign one: the asker learns
            # who leads, and our epoch (a leaderless node follows a foreign epoch's leader).
            self._stats.messages_sent += 1
            return [Send(to=NodeId(sender), message=Coordinator(self._epoch, self._rank))]
        if not lower:
            self._stats.overheard += 1  # a higher key stands above our epoch: it will win
            return []
        self._stats.messages_sent += 1  # the asker has seen a newer epoch: re-assert above it
        out: list[object] = [Send(to=NodeId(sender), message=Answer(self._max_epoch, self._rank))]
        out.extend(self._start(now))
        return out

    def _on_answer(self, sender: int, inc: int, msg: Answer, now: float) -> list[object]:
        self._seen(msg.epoch)
        self._learn(sender, msg.rank)
        if (msg.rank, sender) < self._key:
            self._stats.unexpected += 1
            return []
        if self._state == "electing":
            self._state = "waiting"
            self._deadline = now + self._cfg.coordinator_timeout
        elif self._state != "waiting":  # in "waiting", more answers are normal
            self._stats.unexpected += 1
        return []

    def _on_coordinator(self, sender: int, inc: int, msg: Coordinator, now: float) -> list[object]:
        self._seen(msg.epoch)
        epoch, rank = msg.epoch, msg.rank
        if sender != self._leader or inc == self._leader_inc or self._state == "leader":
            return self._claim(sender, inc, epoch, rank, now)
        older = incarnation_newer(self._leader_inc, inc)
        if older and (epoch == self._epoch or epoch_newer(self._epoch, epoch)):
            self._stats.stale_epoch += 1  # from an earlier life of our leader
            return []
        # (An earlier life claiming a newer or foreign epoch than the one we follow: the
        # life we recorded is not the one that leads now, perhaps a forged incarnation.
        # Judged like a restart, on its merits.)
        # Our leader restarted: the life we followed is gone. Judge the new life's claim
        # as if we had no leader; if we cannot follow it, a candidate elects.
        self._stats.leader_restarted += 1
        self._leader = 0
        out = self._claim(sender, inc, epoch, rank, now)
        if self._leader == 0 and self._capable and self._state == "follower":
            out.extend(self._schedule(now, listen=False))
        return out

    def _claim(self, sender: int, inc: int, epoch: int, rank: int, now: float) -> list[object]:
        """Rules 5 and 6, merging and the stable option: what a Coordinator means to us."""
        self._learn(sender, rank)
        if sender == self._leader and epoch == self._epoch:
            self._leader_heard = now
            self._leader_rank = rank  # the leader we follow, alive: no election needed
            if self._state != "follower":
                self._state, self._deadline = "follower", None
            return []
        newer = epoch_newer(epoch, self._epoch)
        older = epoch_newer(self._epoch, epoch)
        if self._state == "leader":
            higher = (rank, sender) > self._key
            if (newer and (self._cfg.stable_leader or higher)) or (higher and not older):
                # A newer epoch, or a higher key in ours or a foreign one (foreign epochs
                # do not order: the key decides, rule 6).
                self._stats.stepped_down += 1
                return self._follow(sender, inc, rank, epoch, now)
            if older or (not newer and epoch != self._epoch):
                self._stats.stale_epoch += 1  # older, or foreign with a lower key
                return self._announce()  # re-assert at once; the claimant steps down
            self._stats.bullied += 1
            return self._start(now)  # a lower key in our epoch or newer: take a newer one
        if self._leader == 0:
            fresh = not older  # foreign included: nothing better to go by
        else:
            fresh = (
                newer
                or (epoch == self._epoch and (rank, sender) > (self._leader_rank, self._leader))
                # A foreign epoch: while electing or waiting (the leader we had is not
                # live), from the leader we follow itself (it moved on without us), or
                # once that leader has not announced itself for two announce intervals
                # (a forged leader in a real member's name never does).
                or (
                    not older
                    and epoch != self._epoch
                    and (
                        self._state != "follower"
                        or (sender == self._leader and inc == self._leader_inc)
                        or now - self._leader_heard > 2 * self._cfg.announce_interval
                    )
                )
            )
        if not fresh:
            self._stats.stale_epoch += 1
            if self._leader == 0 and not self._capable:
                self._stats.fenced_sent += 1
                self._stats.messages_sent += 1
                return [Send(to=NodeId(sender), message=Fenced(self._max_epoch))]
            if self._leader == 0 and (rank, sender) > self._key and older:
                # A higher key leads an epoch older than ours, and we cannot follow it: tell
                # it the epoch it must beat. Ours, not the highest seen: that one may be
                # forged, foreign to the leader, which would ignore it, and our Elections
                # (carrying it) too, for good (adversary seed 202).
                self._stats.fenced_sent += 1
                self._stats.messages_sent += 1
                return [Send(to=NodeId(sender), message=Fenced(self._epoch))]
            return []
        if self._capable and not self._cfg.stable_leader and (rank, sender) < self._key:
            self._stats.bullied += 1
            return self._schedule(now, listen=False)
        return self._follow(sender, inc, rank, epoch, now)

    def _on_fenced(self, sender: int, inc: int, msg: Fenced, now: float) -> list[object]:
        self._seen(msg.epoch)
        if self._state == "leader" and epoch_newer(msg.epoch, self._epoch):
            return self._start(now)  # our epoch is behind what the group has seen
        if self._state != "electing":  # electing: noted, we will win above it
            self._stats.unexpected += 1
        return []

    def _on_heartbeat(self, sender: int, inc: int, msg: Heartbeat, now: float) -> list[object]:
        """Rule 7 (rival leader): another node heartbeats this group while we lead.

        It believes it leads: a twin of our epoch elected on the other side of a cut, or
        the leader of another epoch. Its heartbeats come every heartbeat interval, our
        Coordinator only every ``announce_interval``, so a cut that flaps can keep the
        Coordinators from ever crossing while many heartbeats do. Re-announce at once (at
        most once per ``answer_timeout``): the rival then applies the Coordinator rules
        (steps down, or re-asserts above our epoch), and so do its followers.

        In any state the heartbeat's epoch is noted as seen (rule 2: a win takes the
        highest seen + 1): its sender leads that epoch, so winning it would make a twin.
        A candidate whose copies of the leader's Coordinator were all lost but that heard
        its heartbeats otherwise stood again after ``coordinator_timeout`` and, the leader
        not answering (paused, or its answer lost), won the leader's own epoch (the
        Hypothesis schedule in ``tests/test_fuzz_protocols.py``,
        ``test_hypothesis_twin_of_a_paused_lead``).
        """
        self._seen(msg.epoch)
        if self._state != "leader":
            return []  # who a follower follows is fenced by membership and the Coordinators
        self._stats.rival_heartbeats += 1
        if now < self._rival_reply_after:
            return []
        self._rival_reply_after = now + self._cfg.answer_timeout
        return self._announce()

    # ------------------------------------------------------------ steps

    def _schedule(self, now: float, *, listen: bool, spread: bool = False) -> list[object]:
        """Rule 1: start an election now if we are the highest we know, else later
        (``spread``: with jitter even so, as at a bootstrap where nobody knows anyone)."""
        if self._state != "follower":
            return []  # already electing or waiting
        cfg = self._cfg
        above = self._above()
        delay = cfg.announce_interval + cfg.answer_timeout if listen else 0.0
        if above or listen or spread:
            delay += min(above * cfg.stagger, cfg.max_delay)
            if cfg.jitter:
                delay += self._rng.uniform(0.0, cfg.jitter)
        if delay == 0.0:
            return self._start(now)
        at = now + delay
        if self._deadline is None or at < self._deadline:
            self._deadline = at
        return []

    def _start(self, now: float) -> list[object]:
        """Rule 2: ask the whole group, then wait ``answer_timeout`` for an objection."""
        self._stats.elections_started += 1
        self._stats.messages_sent += 1
        self._state = "electing"
        self._deadline = now + self._cfg.answer_timeout
        return [
            ElectionStarted(group=GroupId(self._group), epoch=Epoch(self._next_epoch())),
            Multicast(message=Election(self._max_epoch, self._rank)),
        ]

    def _above(self) -> int:
        """How many known candidates have a higher key than ours (the lost leader left out)."""
        key, lost = self._key, self._lost
        return sum(1 for n, rank in self._ranks.items() if (rank, n) > key and n != lost)

    def _learn(self, node: int, rank: int) -> None:
        ranks = self._ranks
        if node in ranks or len(ranks) < MAX_CANDIDATES:
            ranks[node] = rank
        else:  # a flood of made-up ids: the view's candidates and the first heard only
            self._stats.candidates_full += 1
        if node == self._lost:
            self._lost = 0  # it speaks: it is alive after all

    def _next_epoch(self) -> int:
        return next_epoch(self._max_epoch)

    def _win(self, now: float) -> list[object]:
        epoch = self._next_epoch()
        self._max_epoch = self._epoch = epoch
        self._leader, self._leader_rank = self._me, self._rank
        self._state = "leader"
        self._lost = 0
        self._deadline = now + self._cfg.announce_interval
        self._stats.elections_won += 1
        self._stats.messages_sent += 1
        return [
            Multicast(message=Coordinator(epoch, self._rank)),
            LeaderElected(group=GroupId(self._group), leader=NodeId(self._me), epoch=Epoch(epoch)),
        ]

    def _announce(self) -> list[object]:
        self._stats.announcements += 1
        self._stats.messages_sent += 1
        return [Multicast(message=Coordinator(self._epoch, self._rank))]

    def _follow(self, leader: int, inc: int, rank: int, epoch: int, now: float) -> list[object]:
        self._leader_heard = now
        self._leader_inc = inc
        self._state = "follower"
        self._deadline = None
        self._lost = 0
        self._leader, self._leader_rank, self._epoch = leader, rank, epoch
        self._adopt(epoch)
        return [
            LeaderElected(group=GroupId(self._group), leader=NodeId(leader), epoch=Epoch(epoch))
        ]
