"""The node: every machine of one process, composed; bytes in, bytes out.

Theory of operation
-------------------
A :class:`Node` is what a transport drives (an :class:`~powergrid.events.Endpoint`).
For each group the process is in it keeps one *stack*: a reliable unicast
machine, a reliable ordered multicast machine, a membership machine and an
election machine, all parameterised by the group id. Every node is in its
cluster's group; a node that its cluster elects as broker also joins the
broker group (:data:`~powergrid.types.BROKER_GROUP`) with a second stack of
the same classes (without listening for a lead first, its election seeded with
the lead epoch of its client's last price: election rule 1; a broker whose client
applied none listens until the first client bid that names a lead epoch, which
seeds it instead), and leaves it when it stops being the broker.

Inbound, first of all, a datagram's wire version and realm tag (header bytes
read in place) must be ours: another version is dropped and counted in
``stats.wrong_version``, another realm in ``stats.foreign_realm`` (two
deployments on the same addresses never merge; keyed or not). Then, with a
keyring (:mod:`powergrid.auth`, which also binds the realm into every tag),
a datagram's tag is checked
before anything reads it (``stats.unauthenticated``) and, right after
decoding, its counter against the sender's replay window (``stats.replayed``);
outbound, every datagram is signed after encoding. A datagram is decoded once
(a :class:`~powergrid.errors.DecodeError` is counted in ``stats.malformed``
and dropped), our own multicast loopback is dropped, and datagrams for groups
we are not in are counted and dropped.

**Wiring is data.** Two tables say who takes what; the code that follows them
knows no message or notification by name:

* :data:`ROUTES`: wire message type -> :class:`Route`, its owner machine and
  the machines that overhear it (a membership ``Heartbeat`` is overheard by
  a broker-capable node's election: its epoch is seen, and a leader re-announces
  to a rival, election rule 7; a ``Clearing`` by the lead
  broker, for its reserve). A market route also names the group its messages
  travel in (Bid, BidAck and Price in the cluster; Aggregate and Clearing in
  the broker group), whose stack carries the market's actions out.
* :data:`NOTES`: notification type -> :class:`Note`, the machines that consume
  it (``ViewChanged``: multicast, election, broker; ``MemberRemoved``: unicast,
  as ``PeerGone``; ``LeaderLost``: election; ``LeaderElected``: membership and
  the three market machines), the node's own part (``LeaderElected`` of the
  cluster: join or leave the broker group; ``Deliver``/``DeliverUnicast``:
  unwrap; ``ViewChanged``: pass it on, then a ``MemberJoined`` / ``MemberLeft``
  for each other member that came or went, with the reason ``MemberRemoved``
  gave, and every ``MemberLeft`` to the broker too: a leaver's bid goes, a crashed
  member's cap is held),
  and whether the app gets it as it is (all but those three).

A machine is named by its role (:data:`UNICAST` ... :data:`LEAD`), an index
into :attr:`_Stack.machines`: a group's own four machines, then the market's
three (the client: every server bids; the broker: active while this node
leads its cluster; the lead broker: active while it leads the broker group),
which live once per node. Actions go through one work queue per stack:

* ``Send``/``Multicast`` become encoded datagrams (``Transmit``/``TransmitGroup``);
* ``SendReliable``/``MulticastReliable`` are encoded as inner bodies and given
  to the unicast or multicast machine (a reliable unicast one as a superseding
  ``Submit``: a newer message replaces those still queued, and a full queue
  drops instead of raising; no machine sends one today: bids go as plain
  ``Send``, acknowledged by the broker's ``BidAck``); what those deliver with a protocol
  ``kind`` is decoded and routed by :data:`ROUTES` as ``Received`` from the
  original sender (a channel's own messages never nest), and application bytes
  are passed to the app as :class:`MessageDelivered` / :class:`UnicastDelivered`;
* notifications are handled as :data:`NOTES` says; a stack machine's actions
  join the queue, a market machine's are carried out at once in the stack of
  the group their message travels in. A market multicast is also handed to
  this node's own machine that owns its type (the lead's own broker takes its
  Clearing, the broker's own client its Price), and sends to ourselves never
  touch the network. Leaving the broker group steps the lead broker down.

**Total order** is an option per group (``NodeConfig.total_order``): such a stack
also has a :class:`~powergrid.protocols.order.TotalOrderMachine` (``stack.order``,
outside the roles, last in ``stack.own``), a layer over the multicast machine. The
app's multicasts go to it (``OrderedPublish``); the multicast ``Publish`` commands it
returns go to the multicast machine (:data:`NOTES`); the multicast's deliveries of the
ordered kinds go back to it, and the app gets what it delivers in order (a large
message's fragments are ordered messages each, cut with the order header's room and
reassembled by the fragment machine as the order layer delivers them); it sees each
view after the multicast does. A group without the option has no such machine and
runs exactly as before.

The node keeps no timers of its own: ``next_deadline()`` is the earliest of
its machines' deadlines, and ``handle_deadline(now)`` wakes those that are due.
Every call of a machine goes through one place, :meth:`Node._call`, which notes
the machine; ``next_deadline()`` asks again only the machines noted since it
last ran (their deadlines are kept per machine; the memberships', touched by
most datagrams, are kept apart, so that a membership message asks no other
machine and any other message asks no membership). No other code has to
remember that a deadline may have moved.

Two shortcuts keep a large group cheap to simulate, with the same results.
Datagrams decoded lately (by any node) are kept with their ``Received``
event and reused when an equal datagram comes again (decoding depends on the
bytes alone, and everything decoded is immutable): a multicast reaches every
member as one ``bytes`` object, and a member acks every heartbeat with the
same datagram while its view stays. When what a received message yields is
nothing but datagrams to others (most of a quiet group's traffic: a
membership machine acking a heartbeat), they are encoded at once, without the
work queue, and the very action object encoded last (a member's kept ack)
reuses its datagram.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import attrs

from powergrid import wire
from powergrid._checks import config_error, flag, instance, optional, whole
from powergrid.auth import Authenticator, Keyring
from powergrid.errors import ConfigError, DecodeError, UsageError
from powergrid.events import (
    DeadlineReached,
    JoinGroup,
    LeaderElected,
    LeaderLost,
    LeaveGroup,
    Member,
    MemberJoined,
    MemberLeft,
    Multicast,
    MulticastReliable,
    Output,
    Received,
    Send,
    SendReliable,
    Transmit,
    TransmitGroup,
    ViewChanged,
)
from powergrid.protocols.election import ElectionConfig, ElectionMachine
from powergrid.protocols.fragments import (
    FRAGMENT_DATA,
    KIND_FRAGMENT,
    FragmentArrived,
    FragmentConfig,
    FragmentMachine,
    Piece,
    Split,
)
from powergrid.protocols.market import (
    Bid,
    BidChanged,
    BrokerConfig,
    BrokerMachine,
    ClientConfig,
    ClientMachine,
    LeadBrokerMachine,
    LeadConfig,
    PriceUpdated,
    SteppedDown,
    SupplyChanged,
)
from powergrid.protocols.membership import (
    EndListen,
    Join,
    Leave,
    MemberRemoved,
    MembershipConfig,
    MembershipMachine,
)
from powergrid.protocols.multicast import (
    MAX_MULTICAST_PAYLOAD,
    Deliver,
    MulticastConfig,
    MulticastMachine,
    Publish,
    WindowFull,
)
from powergrid.protocols.order import (
    MAX_ORDERED_PAYLOAD,
    ORDERED_FRAGMENT_DATA,
    OrderConfig,
    OrderedPublish,
    TotalOrderMachine,
)
from powergrid.protocols.unicast import (
    MAX_UNICAST_PAYLOAD,
    DeliverUnicast,
    PeerGone,
    Submit,
    UnicastConfig,
    UnicastMachine,
)
from powergrid.types import (
    BROKER_GROUP,
    DEFAULT_REALM,
    GroupId,
    Incarnation,
    NodeId,
    node_field,
    node_id,
    realm_problem,
    realm_tag,
)
from powergrid.wire import (
    HEADER_SIZE,
    KIND_APP,
    KIND_ORDER_CLOCK,
    KIND_ORDERED,
    KIND_ORDERED_FRAGMENT,
    MAGIC,
    REALM_OFFSET,
    VERSION,
    Data,
    Envelope,
    Message,
    UData,
    decode,
    decode_body,
    encode,
    encode_body,
    record_builder,
)

__all__ = [
    "MessageDelivered",
    "Node",
    "NodeConfig",
    "NodeStats",
    "UnicastDelivered",
]


class _DEFAULTS:
    """Every machine's default config: one object of each, shared by every NodeConfig that
    names none (configs are immutable; a simulated data centre holds thousands of nodes)."""

    unicast = UnicastConfig()
    multicast = MulticastConfig()
    fragments = FragmentConfig()
    membership = MembershipConfig()
    election = ElectionConfig()
    client = ClientConfig()
    broker = BrokerConfig()
    lead = LeadConfig()
    order = OrderConfig()


def _group_set(value: Iterable[int]) -> frozenset[int]:
    """``NodeConfig.total_order`` as a frozenset; its members are checked after."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        problem = "must be a set of group ids (the cluster's, 0 for the broker group)"
        raise ConfigError(f"NodeConfig.total_order: {problem}, got {value!r}")
    return frozenset(value)


@attrs.frozen(kw_only=True)
class NodeConfig:
    """Everything a node needs to know about itself; every machine's settings.

    ``host``/``port`` are the node's unicast socket address (an IPv4 dotted
    quad or an IPv6 address, a port in 1..65535), from which its id is derived
    (:func:`~powergrid.types.node_id`). ``realm`` names
    the deployment (the data centre; see :func:`~powergrid.types.realm_problem`
    for what a name may be): the node drops every datagram of another realm.
    ``cluster`` is its cluster's group id within the realm (1..2**32-1; 0 is
    the broker group); ``rank``
    (0..65535) orders the election among ``broker_capable`` nodes.

    Every field is checked when the config is built: a wrong type, a value
    out of range, or fields that contradict each other raise
    :class:`ConfigError` naming the field, e.g.
    ``NodeConfig.supply: must be a whole number of watts >= 0, got -100``.
    """

    host: str = attrs.field(default="127.0.0.1", validator=instance(str, "an IP address string"))
    port: int = attrs.field(validator=whole(1, 0xFFFF))
    realm: str = attrs.field(default=DEFAULT_REALM, validator=instance(str, "a realm name"))
    cluster: int = attrs.field(
        default=1, validator=whole(1, 2**32 - 1, why="group 0 is the broker group")
    )
    rank: int = attrs.field(default=0, validator=whole(0, 0xFFFF))
    broker_capable: bool = attrs.field(default=False, validator=flag)
    unicast: UnicastConfig = attrs.field(
        default=_DEFAULTS.unicast, validator=instance(UnicastConfig)
    )
    multicast: MulticastConfig = attrs.field(
        default=_DEFAULTS.multicast, validator=instance(MulticastConfig)
    )
    fragments: FragmentConfig = attrs.field(
        default=_DEFAULTS.fragments, validator=instance(FragmentConfig)
    )
    """Large messages: the largest app payload, reassembly memory (see
    :mod:`powergrid.protocols.fragments`)."""
    membership: MembershipConfig = attrs.field(
        default=_DEFAULTS.membership, validator=instance(MembershipConfig)
    )
    election: ElectionConfig = attrs.field(
        default=_DEFAULTS.election, validator=instance(ElectionConfig)
    )
    client: ClientConfig = attrs.field(default=_DEFAULTS.client, validator=instance(ClientConfig))
    broker: BrokerConfig = attrs.field(default=_DEFAULTS.broker, validator=instance(BrokerConfig))
    lead: LeadConfig = attrs.field(default=_DEFAULTS.lead, validator=instance(LeadConfig))
    supply: int = attrs.field(default=0, validator=whole(0, unit="watts"))
    """Usable supply in watts, used while this node is the lead broker."""
    bid: Bid | None = attrs.field(default=None, validator=optional(Bid))
    """This server's first bid; None to bid later with :meth:`Node.set_bid`."""
    keyring: Keyring | None = attrs.field(default=None, validator=optional(Keyring))
    """Group keys: sign every datagram and refuse unsigned, forged and replayed
    ones (see :mod:`powergrid.auth`). None: no authentication, flags 0."""
    encrypt: bool = attrs.field(default=False, validator=flag)
    """With a keyring: seal every datagram with AES-256-GCM (body encrypted, header
    authenticated; the ``crypto`` extra, docs/security.md *Encryption*) instead of
    HMAC, and accept only encrypted ones; every node of a realm must agree."""
    total_order: frozenset[int] = attrs.field(default=frozenset(), converter=_group_set)
    """The groups whose app multicasts are delivered in **total order** (any two
    members that deliver two messages deliver them in the same order; see
    :mod:`powergrid.protocols.order`): group ids, the cluster's (``cluster``) and/or
    the broker group's (0). Empty (the default): FIFO per sender only. Every member
    of a group must agree: a node without the option drops the ordered messages
    (counted in ``stats.unroutable``)."""
    order: OrderConfig = attrs.field(default=_DEFAULTS.order, validator=instance(OrderConfig))
    """Settings of total order, for the groups in ``total_order``."""

    def __attrs_post_init__(self) -> None:
        try:
            node_id(self.host, self.port)
        except ConfigError:  # (the port is checked already)
            problem = "must be an IPv4 or IPv6 address such as 127.0.0.1 or ::1"
            raise config_error(self, "host", problem, self.host) from None
        if not (self.client.grid == self.broker.grid == self.lead.grid):
            raise ConfigError(
                "NodeConfig.client.grid, .broker.grid and .lead.grid: must be the "
                "same price grid; pass one Grid to all three"
            )
        if not self.client.ack_timeout < self.broker.bid_timeout:
            raise ConfigError(
                f"NodeConfig.client.ack_timeout: must be below broker.bid_timeout "
                f"({self.broker.bid_timeout} s), or a client counts on an expired bid, "
                f"got {self.client.ack_timeout}"
            )
        bad = realm_problem(self.realm)
        if bad is not None:
            raise ConfigError(f"NodeConfig.{bad}")
        if self.encrypt and self.keyring is None:
            raise ConfigError("NodeConfig.encrypt: needs a keyring (the key it derives from)")
        for group in sorted(self.total_order, key=repr):
            if type(group) is not int or not 0 <= group < 2**32:
                problem = "must hold group ids (ints 0..2**32-1: the cluster, 0 for brokers)"
                raise config_error(self, "total_order", problem, group)

    @property
    def node_id(self) -> NodeId:
        return node_id(self.host, self.port)


@attrs.frozen(kw_only=True)
class MessageDelivered:
    """The app's multicast ``payload``, number ``seq`` from ``sender``, in ``group``."""

    group: GroupId
    sender: NodeId = node_field()
    seq: int
    payload: bytes


@attrs.frozen(kw_only=True)
class UnicastDelivered:
    """The app's reliable unicast ``payload`` from ``sender``, in ``group``."""

    group: GroupId
    sender: NodeId = node_field()
    payload: bytes


@attrs.define(kw_only=True)
class NodeStats:
    """Counters of what the node itself dropped (machines count their own)."""

    received: int = 0
    malformed: int = 0
    """Datagrams the codec refused."""
    own: int = 0
    """Our own multicasts looped back by the network."""
    foreign_group: int = 0
    """Datagrams for a group this node is not in."""
    unroutable: int = 0
    """Messages no machine of the stack takes (e.g. an inner message of the wrong kind)."""
    unauthenticated: int = 0
    """With a keyring: datagrams without a valid tag of an accepted key (before decoding)."""
    replayed: int = 0
    """With a keyring: authentic datagrams refused by the replay window."""
    foreign_realm: int = 0
    """Datagrams of another realm (another deployment on the same addresses, or a
    misconfigured node), dropped before anything else reads them, keyed or not."""
    wrong_version: int = 0
    """Datagrams of another wire version (e.g. a node not upgraded), dropped."""
    spoofed: int = 0
    """Datagrams whose claimed sender id is not the address they came from (see
    :meth:`Node.receive`'s ``source``)."""


# ------------------------------------------------------------------ wiring

UNICAST, MULTICAST, MEMBERSHIP, ELECTION, FRAGMENTS, CLIENT, BROKER, LEAD = range(8)
"""Roles, the indices of :attr:`_Stack.machines`: a group's own five machines, then the
market's three (one per node, shared by every stack)."""
_OWN = CLIENT
"""The roles below this are a stack's own machines; their actions run in that stack."""


class _Stack:
    """The machines of one group, and the node's market machines, by role."""

    __slots__ = (
        "capable",
        "election",
        "fragments",
        "group",
        "machines",
        "members",
        "membership",
        "multicast",
        "order",
        "own",
        "removed",
        "unicast",
    )

    def __init__(self, node: Node, group: GroupId, market: tuple[Any, ...]) -> None:
        cfg = node.config
        me = node.node_id
        inc = node.incarnation
        rng = node.rng
        self.group = group
        self.capable = cfg.broker_capable
        self.unicast = UnicastMachine(cfg.unicast, incarnation=inc, rng=rng)
        self.multicast = MulticastMachine(cfg.multicast, me=me, incarnation=inc, rng=rng)
        self.membership = MembershipMachine(
            cfg.membership,
            me=Member(node=me, incarnation=inc, rank=cfg.rank, broker_capable=cfg.broker_capable),
            group=group,
            rng=rng,
        )
        self.election = ElectionMachine(
            cfg.election,
            me=me,
            rank=cfg.rank,
            broker_capable=cfg.broker_capable,
            group=group,
            rng=rng,
        )
        self.fragments = FragmentMachine(cfg.fragments)
        group_own = (self.unicast, self.multicast, self.membership, self.election, self.fragments)
        self.members: tuple[Member, ...] = ()  # the last view's, for MemberJoined / MemberLeft
        self.removed: dict[int, Any] = {}  # node -> MemberRemoved reason, until the next view
        self.machines: tuple[Any, ...] = group_own + market  # indexed by role
        # Total order, if the group has it: a layer over the multicast, outside the roles
        # (the node hands it the app's multicasts, the ordered deliveries and the views).
        self.order = (
            TotalOrderMachine(cfg.order, me=me, incarnation=inc)
            if group in cfg.total_order
            else None
        )
        self.own: tuple[Any, ...] = group_own if self.order is None else (*group_own, self.order)


def _capable(stack: _Stack) -> bool:
    return stack.capable


@attrs.frozen
class Route:
    """Who takes a received message of one type: its ``owner``, then each of its
    ``overhearers`` (only while ``overhear_if(stack)`` holds, if given).

    ``travels`` is None for a group's own messages, which stay in the stack they
    arrived in; for a market message it is the group the message travels in
    (``"cluster"`` or ``"brokers"``), whose stack carries the market's actions out.
    """

    owner: int
    overhearers: tuple[int, ...] = ()
    overhear_if: Callable[[_Stack], bool] | None = None
    travels: Literal["cluster", "brokers"] | None = None
    roles: tuple[int, ...] = attrs.field(init=False)
    """The owner, then the overhearers (built once, not per message)."""

    @roles.default
    def _all_roles(self) -> tuple[int, ...]:
        return (self.owner, *self.overhearers)


ROUTES: dict[type[Message], Route] = {
    **{t: Route(MULTICAST) for t in (wire.Data, wire.Xmit, wire.Nak, wire.Status, wire.Stable)},
    **{t: Route(UNICAST) for t in (wire.UData, wire.UAck)},
    # A heartbeat is membership's; a broker-capable node's election overhears it too:
    # it notes the epoch as seen (a win takes the highest seen + 1, so it must not win
    # the epoch of a leader it heard heartbeat), and a leader re-announces to a rival
    # (election rule 7). A node that cannot stand never wins, so it is not asked.
    wire.Heartbeat: Route(MEMBERSHIP, overhearers=(ELECTION,), overhear_if=_capable),
    **{
        t: Route(MEMBERSHIP)
        for t in (
            wire.HeartbeatAck,
            wire.Probe,
            wire.ProbeAck,
            wire.JoinRequest,
            wire.LeaveNotice,
            wire.ViewRequest,
            wire.ViewPart,
        )
    },
    **{t: Route(ELECTION) for t in (wire.Election, wire.Answer, wire.Coordinator, wire.Fenced)},
    wire.Bid: Route(BROKER, travels="cluster"),
    wire.BidAck: Route(CLIENT, travels="cluster"),
    wire.Applied: Route(BROKER, travels="cluster"),
    # A broker-capable node's broker overhears its cluster's prices: as a new broker it
    # republishes the last one at once (broker "Failover continuity").
    # Its lead machine overhears them too: the budget in force, which it holds if it
    # becomes the lead when that broker is gone (lead broker, "Budgets in force").
    wire.Price: Route(CLIENT, overhearers=(BROKER, LEAD), overhear_if=_capable, travels="cluster"),
    wire.Aggregate: Route(LEAD, travels="brokers"),
    # The lead broker overhears other leads' budgets (its reserve for clusters it has
    # not heard from); it never answers them.
    wire.Clearing: Route(BROKER, overhearers=(LEAD,), travels="brokers"),
}
"""Wire message type -> the machines that take it. A type not here is unroutable."""

_CHANNELS = (UNICAST, MULTICAST)
"""The reliable channels' roles: their own messages never travel inside a channel."""


@attrs.frozen
class Note:
    """What the node does with a notification a machine emits: hand it (or ``as_event``
    of it) to each of ``consumers`` in order, then run the node's own part ``then``;
    and pass the notification on to the app if ``to_app``."""

    consumers: tuple[int, ...] = ()
    as_event: Callable[[Any], Any] | None = None
    then: Callable[..., None] | None = None
    to_app: bool = True


# ------------------------------------------------------------------ hot records

# Positional constructors of the records built for every message (record_builder: the
# same objects as ``cls(**fields)``, about twice as fast); field order as declared.
_new_received = record_builder(Received)  # sender, incarnation, message
_new_transmit = record_builder(Transmit)  # to, data
_new_transmit_group = record_builder(TransmitGroup)  # group, data
_new_publish = record_builder(Publish)  # kind, payload, flow
_new_delivered = record_builder(MessageDelivered)  # group, sender, seq, payload
_new_piece = record_builder(Piece)  # kind, payload
_new_arrived = record_builder(FragmentArrived)  # channel, origin, incarnation, seq, payload


_TICK = DeadlineReached()  # (immutable and empty: one for every wake-up)


def _app_delivery(stack: _Stack, act: Deliver) -> MessageDelivered:
    """The app's notification of a multicast machine's Deliver of KIND_APP."""
    return _new_delivered(stack.group, act.origin, act.seq, act.payload)


_FRAGMENTING = {
    False: (MAX_MULTICAST_PAYLOAD, FRAGMENT_DATA),
    True: (MAX_ORDERED_PAYLOAD, ORDERED_FRAGMENT_DATA),
}
"""Whether the group is totally ordered -> (the largest payload sent whole, the bytes
of a large message per fragment): an ordered group's pieces leave room for the order
layer's header."""


# ------------------------------------------------------------------ decoding cache

_decoded: dict[bytes, tuple[Envelope, Received]] = {}
"""Datagrams decoded lately (by any node), with their envelope and Received event.

Decoding is a function of the bytes alone, and envelopes, messages and events
are immutable, so equal datagrams can share one decoding: a multicast reaches
every member of its group (as one ``bytes`` object), and a member's ack to
each heartbeat is the same datagram until its view changes, so most of a
quiet group's traffic is decoded once. A reliable unicast's data
(:class:`~powergrid.wire.UData`) is not kept: its sender, sequence number and
payload make it unlike any other datagram but its own rare retransmission,
and a large data centre's bids, kept, filled the cache every two seconds and
flushed what repeats (10,000 nodes x 20 s: 120,499 decodings of members'
acks instead of 10,000). Cleared when it holds
:data:`_DECODED_MAX` datagrams, which bounds what a long-running real node keeps
(at most 16,384 datagrams of <= 1,400 bytes and their decodings). A process that
hosts many nodes (the simulator) raises the bound while it runs them
(:func:`decoding_room`). A reliable multicast's :class:`~powergrid.wire.Data` is
kept apart, in :data:`_recent_data`.
"""
_DECODED_MAX = 1 << 14


@contextlib.contextmanager
def decoding_room(datagrams: int) -> Iterator[None]:
    """Let the cache of decodings hold at least ``datagrams`` while the block runs
    (for a process that hosts many nodes: the simulator), then bring it back under
    its bound for one node.

    What repeats in a data centre is per node (each member's ack of its leader's
    heartbeats, each server's bid to its broker), so a bound of 16,384 for the whole
    process held that working set at 1,000 nodes but not at 10,000, where the cache
    was cleared about every two seconds and each clear had every ack and bid decoded
    again (10,000 nodes x 10 s: 129,411 decodings; 33,154 with room to spare).
    Decoding is a function of the bytes alone: the bound changes no result.
    """
    global _DECODED_MAX  # noqa: PLW0603
    was = _DECODED_MAX
    _DECODED_MAX = max(was, datagrams)
    try:
        yield
    finally:
        _DECODED_MAX = was
        if len(_decoded) >= was:
            _decoded.clear()


_recent_data: dict[bytes, tuple[Envelope, Received]] = {}
"""Data datagrams decoded lately, as :data:`_decoded` keeps the others; cleared at
:data:`_RECENT_DATA_MAX`. The copies of one multicast reach the nodes of one process
(the simulator) close together (in fuzz seeds 0-4, always fewer than 16 other Data
datagrams apart), and a node on a real network gets each one once. Kept as long as
members' acks, a stream's Data only held memory and objects that outlived the
garbage collector's young generations, and its full collections then took about a
fifth of the asyncio transport's CPU per delivered message (``bench/udp.py``, 1
receiver: 4 to 5 us of about 22 us); a bound of 64 keeps the stream's decodings
young enough to be freed before they are promoted.
"""
_RECENT_DATA_MAX = 64
_DATA_CODE = Data.TYPE
_MAGIC_VERSION = MAGIC + bytes((VERSION,))


def _earliest(dues: list[float | None]) -> float | None:
    best: float | None = None
    for due in dues:
        if due is not None and (best is None or due < best):
            best = due
    return best


_realm_headers: dict[int, bytes] = {}
"""Realm tag -> its four header bytes: one object per realm for all the nodes of a
process, not one each (every datagram reads it; in a simulated data centre a node's
own copy was one more cold object per delivery)."""


def _realm_header(realm: int) -> bytes:
    header = _realm_headers.get(realm)
    if header is None:
        header = _realm_headers[realm] = realm.to_bytes(4, "big")
    return header


class _Gate:
    """What a datagram must pass before any machine sees it, in this order: the
    wire version and realm (header bytes; another realm's or version's datagram is
    counted and dropped, keyed or not), the authentication tag, decoding (through
    the shared cache of decodings), the claimed sender against the source address,
    our own looped-back multicasts, and the replay window. Each refusal is counted
    in the node's :class:`NodeStats`; :meth:`admit` never raises for peer input.
    The way out, for the common case of actions that are all datagrams to others,
    is here too (:meth:`send_only`): this node's header and seal are in one place.
    """

    __slots__ = ("_auth", "_id", "_inc", "_last_out", "_realm", "_realm_bytes", "_stats")

    def __init__(
        self,
        me: NodeId,
        incarnation: Incarnation,
        realm: int,
        auth: Authenticator | None,
        stats: NodeStats,
    ) -> None:
        self._id = me
        self._inc = incarnation
        self._realm = realm
        self._realm_bytes = _realm_header(realm)
        self._auth = auth
        self._stats = stats
        self._last_out: tuple[Any, int, Output] = (None, -1, None)  # action, group, datagram

    def admit(self, data: bytes, source: int) -> tuple[Envelope, Received] | None:
        """``(envelope, Received)`` for a datagram that passes, else None (counted): the
        pair the cache of decodings keeps, as it is (no tuple built per datagram)."""
        stats = self._stats
        stats.received += 1
        if (
            not data.startswith(self._realm_bytes, REALM_OFFSET)
            or not data.startswith(_MAGIC_VERSION)
        ) and self._foreign(data):  # (startswith: no slice is made)
            return None
        auth = self._auth
        counter = 0
        if auth is not None:  # nothing reads a datagram before its tag is checked
            opened = auth.open(data)
            if opened is None:
                stats.unauthenticated += 1
                return None
            data, counter = opened
        # (byte 3 is the message type: see wire.decode; a shorter datagram fails decoding)
        is_data = len(data) > 3 and data[3] == _DATA_CODE
        cache = _recent_data if is_data else _decoded
        known = cache.get(data)
        if known is None:
            try:
                decoded = decode(data)
            except DecodeError:
                stats.malformed += 1
                return None
            known = (decoded, _new_received(decoded.sender, decoded.incarnation, decoded.message))
            if type(decoded.message) is not UData:  # (see _decoded)
                if len(cache) >= (_RECENT_DATA_MAX if is_data else _DECODED_MAX):
                    cache.clear()
                cache[data] = known
        env = known[0]
        if source and env.sender != source:
            stats.spoofed += 1
            return None
        if env.sender == self._id:
            stats.own += 1
            return None
        if auth is not None and not auth.accept(env.sender, env.incarnation, counter):
            stats.replayed += 1
            return None
        return known

    def send_only(self, group: int, actions: list[Any], out: list[Output]) -> bool:
        """Encode ``actions`` of ``group`` into ``out`` if they are all datagrams to
        others; else False (and ``out`` untouched). The way out of most of a quiet
        group's traffic (a member's heartbeat ack), so the last datagram is kept for
        the same action again."""
        me = self._id
        for act in actions:
            kind = type(act)
            if not (kind is Multicast or (kind is Send and act.to != me)):
                return False
        sealed = self._auth is not None
        for act in actions:
            last = self._last_out
            if act is last[0] and group == last[1] and not sealed:
                out.append(last[2])  # the same action as last time (a member's ack)
                continue
            data = self.datagram(group, act.message)
            if type(act) is Send:
                tx: Output = _new_transmit(act.to, data)
            else:
                tx = _new_transmit_group(group, data)
            out.append(tx)
            self._last_out = (act, group, tx)
        return True

    def datagram(self, group: int, message: Message) -> bytes:
        """``message`` of ``group`` as this node sends it: header, body and, with a
        keyring, the seal."""
        data = encode(group, self._id, self._inc, message, self._realm)
        return data if self._auth is None else self._auth.seal(data)

    def _foreign(self, data: bytes) -> bool:
        """Whether ``data`` (not of our realm and version, by its header bytes) is a
        powergrid datagram of another version or realm: then it is counted here and
        dropped. Anything else (too short, another magic) is left to the checks that
        follow, which count it as malformed or unauthenticated."""
        if len(data) < 3 or data[:2] != MAGIC:
            return False
        if data[2] != VERSION:
            self._stats.wrong_version += 1
            return True
        if len(data) < HEADER_SIZE:
            return False
        self._stats.foreign_realm += 1
        return True


class Node:
    """All machines of one process (see the module docstring).

    ``incarnation`` numbers this life of the process (a restart must use a
    higher one); ``rng`` is the only source of randomness.
    """

    __slots__ = (
        "_auth",
        "_broker",
        "_client",
        "_cluster",
        "_dues",
        "_gate",
        "_home",
        "_id",
        "_incarnation",
        "_index",
        "_lead",
        "_lead_epoch_seen",
        "_market",
        "_membership_called",
        "_membership_due",
        "_membership_one",
        "_memberships",
        "_realm",
        "_rest_due",
        "_seed_from_bids",
        "_stacks",
        "_started",
        "_stats",
        "_touched",
        "config",
        "rng",
    )

    def __init__(self, config: NodeConfig, *, incarnation: int, rng: random.Random) -> None:
        if not 0 <= incarnation < 2**32:
            raise ConfigError(f"incarnation {incarnation} is outside 0..2**32-1")
        self.config = config
        self.rng = rng
        self._id = config.node_id
        self._incarnation = Incarnation(incarnation)
        self._cluster = GroupId(config.cluster)
        self._stacks: dict[int, _Stack] = {}
        self._home: _Stack | None = None  # the cluster's stack (most datagrams are for it)
        self._stats = NodeStats()
        self._started = False
        self._realm = realm_tag(config.realm)
        self._auth = (
            None
            if config.keyring is None
            else Authenticator(config.keyring, realm=config.realm, encrypt=config.encrypt)
        )
        self._gate = _Gate(self._id, self._incarnation, self._realm, self._auth, self._stats)
        me = self._id
        self._client = ClientMachine(me, self._cluster, config.client, supply=config.supply)
        self._lead = LeadBrokerMachine(me, config.supply, config.lead, cluster=self._cluster)
        self._lead_epoch_seen = 0  # the lead epoch of the last price the client applied
        # A new broker that joined the broker group listening (it knew no lead epoch) until
        # that group has a leader: its clients' bids name lead epochs to stand above.
        self._seed_from_bids = False
        self._broker = BrokerMachine(me, self._cluster, config.broker)
        self._market: tuple[Any, ...] = (self._client, self._broker, self._lead)  # role - CLIENT
        # next_deadline(): every machine is called through _call, which notes it; the
        # earliest deadline of all machines but the memberships (_rest_due) is kept per
        # machine (_dues, by _index) and asked again only of those noted in _touched. The
        # memberships' earliest (_membership_due; they are touched by most datagrams, and
        # a Price or a Coordinator touches none) is asked again when one was called.
        self._touched: set[Any] = set()
        self._index: dict[Any, int] = {}
        self._dues: list[float | None] = []
        self._rest_due: float | None = None
        self._memberships: list[MembershipMachine] = []
        # the only membership when the node is in one group (most nodes)
        self._membership_one: MembershipMachine | None = None
        self._membership_due: float | None = None
        self._membership_called = False

    # ------------------------------------------------------------ surface

    @property
    def node_id(self) -> NodeId:
        return self._id

    @property
    def incarnation(self) -> Incarnation:
        return self._incarnation

    @property
    def stats(self) -> NodeStats:
        return self._stats

    @property
    def groups(self) -> tuple[GroupId, ...]:
        """The groups this node is in, sorted."""
        return tuple(GroupId(g) for g in sorted(self._stacks))

    @property
    def client(self) -> ClientMachine:
        """This server's market client (read its properties; never drive it directly)."""
        return self._client

    @property
    def broker(self) -> BrokerMachine:
        return self._broker

    @property
    def lead(self) -> LeadBrokerMachine:
        return self._lead

    def stack(self, group: int) -> _Stack:
        """The machines of ``group`` (read their properties; never drive them directly)."""
        return self._stacks[group]

    def start(self, now: float) -> list[Output]:
        """Join the cluster group, and bid if the config has a bid.

        Raises :class:`UsageError` if called twice.
        """
        if self._started:
            raise UsageError("node already started")
        self._started = True
        out: list[Output] = []
        self._join(self._cluster, now, out)
        if self.config.bid is not None:
            out.extend(self.set_bid(self.config.bid, now))
        return out

    def receive(self, data: bytes, now: float, source: int = 0) -> list[Output]:
        """One datagram from the network (unicast or multicast).

        ``source``: the node id of the address it came from (0: not known, not
        checked; the UDP transports pass it): a datagram that claims another
        sender is dropped and counted in ``spoofed``, so nothing answers a forged id.
        """
        admitted = self._gate.admit(data, source)
        if admitted is None:
            return []
        env, event = admitted
        group = env.group
        stack = self._home if group == self._cluster else self._stacks.get(group)
        if stack is None:
            self._stats.foreign_group += 1
            return []
        msg = event.message
        if type(msg) is Data and _DATA_TO_MULTICAST_ALONE:
            # Data goes to the multicast machine alone (ROUTES): _take without its lookups.
            # The hot path of a stream: an application multicast delivered in order, the
            # same as _run of its lone Deliver (_on_deliver), without the Deliver.
            machine = stack.multicast
            self._touched.add(machine)  # (as _call notes it)
            if msg.kind == KIND_APP:
                if machine.deliver_next(event.sender, event.incarnation, msg, now):
                    return [_new_delivered(stack.group, event.sender, msg.seq, msg.payload)]
                if machine.hold_next(event.sender, event.incarnation, msg, now):
                    return []  # held behind a gap being repaired: nothing to do yet
            actions = machine.handle(event, now)
        else:
            actions = None
        out: list[Output] = []
        if actions is None:
            actions = self._take(stack, event, now, out)
            if not actions or self._gate.send_only(stack.group, actions, out):
                return out  # (most of a quiet group's traffic is answered by nothing, or sent)
        self._run(stack, actions, now, out)
        return out

    def handle_deadline(self, now: float) -> list[Output]:
        """Wake every machine whose deadline has come."""
        out: list[Output] = []
        tick = _TICK
        for group in sorted(self._stacks):
            stack = self._stacks.get(group)
            if stack is None:
                continue
            for machine in stack.own:
                due = machine.next_deadline()
                if due is not None and due <= now:
                    self._run(stack, self._call(machine, tick, now), now, out)
        for machine in self._market:
            due = machine.next_deadline()
            if due is not None and due <= now:
                self._run_market(self._call(machine, tick, now), now, out)
        return out

    def next_deadline(self) -> float | None:
        """The earliest deadline of all machines (seconds), or None."""
        touched = self._touched
        if touched:
            dues, index = self._dues, self._index
            moved = False
            for machine in touched:
                i = index.get(machine)
                if i is not None:  # (None: of a stack that is gone)
                    due = machine.next_deadline()
                    if due != dues[i]:
                        dues[i] = due
                        moved = True
            touched.clear()
            if moved:  # (a duplicate, an ack, a Coordinator mostly moves none)
                self._rest_due = _earliest(dues)
        if self._membership_called:
            self._membership_called = False
            one = self._membership_one  # one group (most nodes): no list
            self._membership_due = (
                one.next_deadline()
                if one is not None
                else _earliest([m.next_deadline() for m in self._memberships])
            )
        best = self._rest_due
        due = self._membership_due
        if due is not None and (best is None or due < best):
            return due
        return best

    def multicast(self, payload: bytes, now: float, *, group: int | None = None) -> list[Output]:
        """Multicast application bytes to ``group`` (default: the cluster), reliably, FIFO;
        in total order if the group is in ``config.total_order``.

        A payload over ``MAX_MULTICAST_PAYLOAD`` bytes goes as fragments, one multicast
        each, and is delivered whole (:mod:`powergrid.protocols.fragments`); in a totally
        ordered group one over :data:`~powergrid.protocols.order.MAX_ORDERED_PAYLOAD`
        goes as fragments that are ordered messages each (numbers ``n`` one after the
        other; delivered whole, numbered by the first). Raises
        :class:`UsageError` if the node is not in that group and
        :class:`~powergrid.errors.PayloadTooLargeError` over ``config.fragments.max_message``.
        Under flow control (``MulticastConfig.send_window``), a full send window returns
        :class:`~powergrid.protocols.multicast.WindowFull` and sends nothing (see
        :meth:`multicast_room`); a large message takes the window's room by its first
        fragment, and its other fragments follow it (they count in the window, never
        refused): sent whole or not at all. (An ordered group's are never refused.)
        """
        stack = self._home if group is None else None  # (the cluster's, the common case)
        if stack is None:
            stack = self._stack_or_raise(group)
        out: list[Output] = []
        order = stack.order  # a totally ordered group: the order layer numbers each piece
        if order is None and type(payload) is bytes and len(payload) <= MAX_MULTICAST_PAYLOAD:
            # The hot path of a stream: one piece, whose Publish the machine answers with
            # its own delivery (rule 10) and the Multicast; the same as the loop below
            # and _run, without their loops and lookups, nor a Publish record.
            machine = stack.multicast
            self._touched.add(machine)  # (as _call notes it)
            if not _DELIVER_ALONE:
                self._run(stack, machine.publish(KIND_APP, payload, True, now), now, out)
                return out
            sent = machine.publish_data(KIND_APP, payload, True, now)
            if type(sent) is not Data:  # refused by the send window (WindowFull)
                out.append(sent)
                return out
            group = stack.group
            out.append(_new_delivered(group, self._id, sent.seq, payload))
            out.append(_new_transmit_group(group, self._gate.datagram(group, sent)))
            return out
        limit, data = _FRAGMENTING[order is not None]
        pieces: list[Any] = [_new_piece(KIND_APP, payload)]
        if type(payload) is bytes and len(payload) > limit:
            pieces = self._call(stack.fragments, Split(payload=payload, data=data), now)
        first = True
        for piece in pieces:
            if order is not None:
                cmd: Any = OrderedPublish(payload=piece.payload, kind=piece.kind)
                actions = self._call(order, cmd, now)
            else:
                cmd = _new_publish(piece.kind, piece.payload, first)
                actions = self._call(stack.multicast, cmd, now)
            self._run(stack, actions, now, out)
            if first and actions and type(actions[0]) is WindowFull:
                break  # refused by the send window: nothing of it was sent
            first = False
        return out

    def multicast_room(self, *, group: int | None = None) -> int | None:
        """How many more app multicasts ``group``'s send window takes now (multicast rule
        27); None without flow control (``MulticastConfig.send_window`` 0). A multicast
        beyond it returns :class:`~powergrid.protocols.multicast.WindowFull` and sends
        nothing; :class:`~powergrid.protocols.multicast.WindowOpen` follows when stability
        makes room. Raises :class:`UsageError` if the node is not in that group."""
        stack = self._home if group is None else None
        if stack is None:
            stack = self._stack_or_raise(group)
        return stack.multicast.window_room

    def send(
        self, to: int, payload: bytes, now: float, *, group: int | None = None
    ) -> list[Output]:
        """Send application bytes to node ``to`` reliably, in order; a large payload as
        fragments, like :meth:`multicast`. Raises as :class:`Submit` and :class:`Split` do."""
        stack = self._stack_or_raise(group)
        out: list[Output] = []
        pieces: list[Any] = [_new_piece(KIND_APP, payload)]
        if type(payload) is bytes and len(payload) > MAX_UNICAST_PAYLOAD:
            pieces = self._call(stack.fragments, Split(payload=payload), now)
        for piece in pieces:
            submit = Submit(to=NodeId(to), kind=piece.kind, payload=piece.payload)
            self._run(stack, self._call(stack.unicast, submit, now), now, out)
        return out

    def set_bid(self, bid: Bid, now: float) -> list[Output]:
        """This server's new bid (watts); the client reports it to the broker."""
        out: list[Output] = []
        self._run_market(self._call(self._client, BidChanged(bid=bid), now), now, out)
        return out

    def set_supply(self, watts: int, now: float) -> list[Output]:
        """The usable supply (watts): the lead broker clears against it, and a client with
        no broker whose cap was granted from a higher one cuts its cap when no price of it
        comes (docs/protocols/market.md, "Supply drops without a price")."""
        out: list[Output] = []
        changed = SupplyChanged(watts=watts)
        for machine in (self._lead, self._client):
            self._run_market(self._call(machine, changed, now), now, out)
        return out

    def leave(self, now: float) -> list[Output]:
        """Leave every group gracefully (a Leave to each leader), then unsubscribe."""
        out: list[Output] = []
        for group in sorted(self._stacks, reverse=True):
            self._leave(self._stacks[group], now, out)
        return out

    # ------------------------------------------------------------ internals

    def _call(self, machine: Any, event: object, now: float) -> list[Any]:
        """Every machine call goes through here: the machine is noted, and
        :meth:`next_deadline` asks it for its deadline again (nothing else can move it)."""
        if type(machine) is MembershipMachine:
            self._membership_called = True
        else:
            self._touched.add(machine)
        return machine.handle(event, now)  # type: ignore[no-any-return]

    def _machines_changed(self) -> None:
        """Rebuild the deadline records after a stack was added or removed."""
        stacks = [self._stacks[g] for g in sorted(self._stacks)]
        self._home = self._stacks.get(self._cluster)
        self._memberships = [st.membership for st in stacks]
        self._membership_one = stacks[0].membership if len(stacks) == 1 else None
        self._membership_called = True  # (ask them all again)
        rest = [m for st in stacks for m in st.own if m is not st.membership]
        rest.extend(self._market)
        self._index = {m: i for i, m in enumerate(rest)}
        self._dues = [m.next_deadline() for m in rest]
        self._rest_due = _earliest(self._dues)

    def _stack_or_raise(self, group: int | None) -> _Stack:
        g = self._cluster if group is None else group
        stack = self._stacks.get(g)
        if stack is None:
            raise UsageError(f"node {self._id} is not in group {g}; it is in {self.groups}")
        return stack

    def _join(
        self, group: GroupId, now: float, out: list[Output], *, listen: bool = True, seen: int = 0
    ) -> None:
        stack = _Stack(self, group, self._market)
        self._stacks[group] = stack
        self._machines_changed()
        out.append(JoinGroup(group=group))
        stack.election.saw_epoch(seen)
        self._run(stack, self._call(stack.membership, Join(listen=listen), now), now, out)

    def _leave(self, stack: _Stack, now: float, out: list[Output]) -> None:
        self._run(stack, self._call(stack.membership, Leave(), now), now, out)
        del self._stacks[stack.group]
        self._machines_changed()
        out.append(LeaveGroup(group=stack.group))
        if stack.group == BROKER_GROUP:  # no broker group, no lead broker
            self._seed_from_bids = False
            self._run_market(self._call(self._lead, SteppedDown(), now), now, out)

    def _take(self, stack: _Stack, event: Received, now: float, out: list[Output]) -> list[Any]:
        """Hand a received message to the machines :data:`ROUTES` names for its type.

        Returns the actions of the stack's own machines, to be carried out in
        ``stack``; the market's are carried out at once (:meth:`_run_market`).
        """
        route = ROUTES.get(type(event.message))
        if route is None:
            self._stats.unroutable += 1
            return []
        machines = stack.machines
        if route.travels is not None:
            if self._seed_from_bids and type(event.message) is wire.Bid:
                self._seed_from_bid(event.message, now, out)
            roles = route.roles
            if route.overhear_if is not None and not route.overhear_if(stack):
                roles = roles[:1]
            for role in roles:
                actions = self._call(machines[role], event, now)
                if actions:  # (an overhearer mostly has nothing to do)
                    self._run_market(actions, now, out)
            return []
        actions = self._call(machines[route.owner], event, now)
        if route.overhearers and (route.overhear_if is None or route.overhear_if(stack)):
            for role in route.overhearers:
                actions = actions + self._call(machines[role], event, now)
        return actions

    def _seed_from_bid(self, bid: wire.Bid, now: float, out: list[Output]) -> None:
        """A new broker listening in the broker group (it knew no lead epoch) takes the lead
        epoch a member's bid names: its election stands above it, and the listen ends at
        once (rule M8 without the wait, as ``Join(listen=False)`` does): the same seeding
        as election rule 1's, with a client's last price instead of its own client's."""
        # Any sender of the cluster group will do (a new broker's view names no other
        # member yet when the re-sent bids come): an epoch that was a lead's, however old,
        # only raises the win above it (election rule 2).
        brokers = self._stacks.get(BROKER_GROUP)
        if not bid.lead_epoch or brokers is None:
            return
        brokers.election.saw_epoch(bid.lead_epoch)
        self._run(brokers, self._call(brokers.membership, EndListen(), now), now, out)

    def _run_market(self, actions: list[Any], now: float, out: list[Output]) -> None:
        """Carry out market actions in the stack of the group their message travels in."""
        for act in actions:
            msg = getattr(act, "message", None)
            if msg is None:  # a notification for the app
                if type(act) is PriceUpdated and act.lead_epoch:
                    self._lead_epoch_seen = int(act.lead_epoch)
                out.append(act)
                continue
            route = ROUTES[type(msg)]
            stack = self._stacks.get(self._cluster if route.travels == "cluster" else BROKER_GROUP)
            if stack is None:  # e.g. an Aggregate after we left the broker group
                self._stats.unroutable += 1
                continue
            self._run(stack, [act], now, out)
            if type(act) is Multicast:
                # The group includes this node, whose other role owns the message: the
                # lead broker's own broker takes the Clearing, the broker's own client
                # the Price. The network does not loop our multicasts back, so the node
                # does (to the owner alone: a lead does not overhear its own Clearing).
                event = Received(sender=self._id, incarnation=self._incarnation, message=msg)
                owner = self._market[route.owner - CLIENT]
                self._run_market(self._call(owner, event, now), now, out)

    def _run(self, stack: _Stack, actions: list[Any], now: float, out: list[Output]) -> None:
        """Carry out ``actions`` and everything they lead to, in order.

        ``queue`` is a list read front to back while what the actions lead to is
        appended at its end (a list iterator sees items appended during the loop),
        which is a FIFO queue without a deque's cost per call.
        """
        queue: list[Any] = list(actions)
        group = stack.group
        me = self._id
        inc = self._incarnation
        datagram = self._gate.datagram
        for act in queue:
            kind = type(act)
            if kind is Deliver and _DELIVER_ALONE and act.kind == KIND_APP:
                # (_on_deliver's first case, inlined: what a repair drains, a delivery each)
                out.append(_new_delivered(group, act.origin, act.seq, act.payload))
                continue
            if kind is Send or kind is SendReliable:
                if act.to == me:  # to ourselves: no network, no channel
                    event = Received(sender=me, incarnation=inc, message=act.message)
                    queue.extend(self._take(stack, event, now, out))
                elif kind is Send:
                    out.append(_new_transmit(act.to, datagram(group, act.message)))
                else:
                    msg: Message = act.message
                    # A protocol message sent reliably is state (a bid): a newer one makes
                    # those still queued worthless, and a full queue never raises from here.
                    submit = Submit(
                        to=act.to, kind=msg.TYPE, payload=encode_body(msg), supersedes=True
                    )
                    queue.extend(self._call(stack.unicast, submit, now))
            elif kind is Multicast:
                out.append(_new_transmit_group(group, datagram(group, act.message)))
            elif kind is MulticastReliable:
                msg = act.message
                publish = Publish(kind=msg.TYPE, payload=encode_body(msg), flow=False)
                queue.extend(self._call(stack.multicast, publish, now))
            else:
                note = NOTES.get(kind)
                if note is not None:
                    if note.consumers:
                        self._notify(note, stack, act, now, queue, out)
                    elif note.then is not None:  # (no consumers: its own part alone)
                        note.then(self, stack, act, now, queue, out)
                    if not note.to_app:
                        continue
                out.append(act)

    def _notify(
        self, note: Note, stack: _Stack, act: Any, now: float, queue: list[Any], out: list[Output]
    ) -> None:
        """Hand a notification to its consumers (:data:`NOTES`): a stack machine's
        actions join ``queue``, a market machine's are carried out at once."""
        event = act if note.as_event is None else note.as_event(act)
        machines = stack.machines
        for role in note.consumers:
            actions = self._call(machines[role], event, now)
            if role < _OWN:
                queue.extend(actions)
            else:
                self._run_market(actions, now, out)
        if note.then is not None:
            note.then(self, stack, act, now, queue, out)

    def _inner(
        self,
        stack: _Stack,
        sender: int,
        incarnation: int,
        kind: int,
        payload: bytes,
        now: float,
        queue: list[Any],
        out: list[Output],
    ) -> None:
        """A protocol message that arrived through a reliable channel."""
        try:
            msg = decode_body(kind, payload)
        except DecodeError:
            self._stats.malformed += 1
            return
        route = ROUTES.get(type(msg))
        if route is None or route.owner in _CHANNELS:  # the channels do not nest
            self._stats.unroutable += 1
            return
        event = Received(sender=NodeId(sender), incarnation=Incarnation(incarnation), message=msg)
        queue.extend(self._take(stack, event, now, out))

    def _on_view(
        self, stack: _Stack, act: ViewChanged, now: float, queue: list[Any], out: list[Output]
    ) -> None:
        """Pass the view on, then a :class:`MemberJoined` / :class:`MemberLeft` for each
        other member that came or went since the group's previous view."""
        out.append(act)
        if stack.order is not None:  # the order layer waits on the view's members
            queue.extend(self._call(stack.order, act, now))
        members = act.view.members
        came, gone = _view_changes(stack.group, stack.members, members)
        stack.members = members
        me = self._id
        for event in came:
            if event.node != me:
                out.append(event)
        removed = stack.removed
        broker = stack.machines[BROKER]
        for node in gone:
            if node != me:
                left = MemberLeft(group=stack.group, node=node, reason=removed.get(node, "unknown"))
                out.append(left)
                # its broker stops counting a leaver's bid, and holds the cap a crashed
                # or cut-off member may still draw out of its budget
                self._run_market(self._call(broker, left, now), now, out)
        removed.clear()

    def _on_removed(
        self, stack: _Stack, act: MemberRemoved, now: float, queue: list[Any], out: list[Output]
    ) -> None:
        """Keep why ``act.node`` went, for the :class:`MemberLeft` after the next view."""
        stack.removed[act.node] = act.reason

    def _follow_cluster_leader(
        self, stack: _Stack, act: LeaderElected, now: float, queue: list[Any], out: list[Output]
    ) -> None:
        """The node's own role: in the broker group exactly while it leads its cluster."""
        if stack.group != self._cluster:
            self._seed_from_bids = False  # the broker group has a leader: the seeding is over
            return
        in_brokers = BROKER_GROUP in self._stacks
        if act.leader == self._id and not in_brokers:
            # A new broker joins the broker group without listening for a lead first (at
            # a cold start there is none yet; after the crash of the lead broker's node,
            # none any more; a live lead answers its Election), above the lead epoch of
            # its client's last price (so it cannot win the epoch of a lead that is gone
            # while the others still follow it). It listens if it won a later cluster
            # epoch than the first and never applied a price: a restarted node that took
            # over a running cluster knows no lead epoch to win above (without listening,
            # the demo's restarted c4.1 won the broker group in too old an epoch, and the
            # lead changed three times instead of once).
            # Until the broker group has a leader, the lead epoch its clients' bids name
            # seeds the election and ends the listen (_seed_from_bid): they re-send their
            # bids to a new broker at once, ~1 ms after its win.
            seen = self._lead_epoch_seen
            listen = not seen and act.epoch != 1
            self._join(BROKER_GROUP, now, out, listen=listen, seen=seen)
            self._seed_from_bids = listen
        elif act.leader != self._id and in_brokers:
            self._leave(self._stacks[BROKER_GROUP], now, out)


_changes_memo: dict[tuple[int, int, int], tuple[Any, Any, Any]] = {}
"""(group, id(old), id(new)) -> (old, new, changes): what :func:`_view_changes` answered.

Every member of a group installs a view as one tuple (see
:mod:`powergrid.protocols.membership`), so in a simulated data centre all nodes
of a group share the work and the event objects (they are immutable). Cleared
at :data:`_CHANGES_MAX` entries."""
_CHANGES_MAX = 256


def _view_changes(
    group: GroupId, old: tuple[Member, ...], new: tuple[Member, ...]
) -> tuple[tuple[MemberJoined | MemberLeft, ...], tuple[NodeId, ...]]:
    """What changed in ``group`` from the members ``old`` to ``new``: the events for
    members that came, in node id order (a ``MemberLeft`` ``"replaced"`` before the
    ``MemberJoined`` of a member's newer life), and the ids of those that went, in
    order. The caller leaves itself out."""
    key = (group, id(old), id(new))
    kept = _changes_memo.get(key)
    if kept is not None and kept[0] is old and kept[1] is new:
        return kept[2]  # type: ignore[no-any-return]
    was = {m.node: m.incarnation for m in old}
    now = {m.node: m.incarnation for m in new}
    came: list[MemberJoined | MemberLeft] = []
    for node in sorted(now):
        inc = now[node]
        before = was.get(node)
        if before != inc:
            if before is not None:  # a new life of a member we knew: the old one went
                came.append(MemberLeft(group=group, node=node, reason="replaced"))
            came.append(MemberJoined(group=group, node=node, incarnation=inc))
    gone = tuple(node for node in sorted(was) if node not in now)
    changes = (tuple(came), gone)
    if len(_changes_memo) >= _CHANGES_MAX:
        _changes_memo.clear()
    _changes_memo[key] = (old, new, changes)
    return changes


def _peer_gone(note: MemberRemoved) -> PeerGone:
    return PeerGone(peer=note.node)


def _on_deliver(
    node: Node, stack: _Stack, act: Deliver, now: float, queue: list[Any], out: list[Output]
) -> None:
    """A multicast delivery (of the multicast machine, or of the order layer in a totally
    ordered group): app bytes to the app (a large message once its fragments are whole;
    an ordered fragment comes here once the order layer delivers it), an ordered message
    to the order layer, a protocol message to its machines."""
    kind = act.kind
    if kind == KIND_APP:
        out.append(_app_delivery(stack, act))
    elif kind == KIND_FRAGMENT:
        arrived = _new_arrived("multicast", act.origin, act.incarnation, act.seq, act.payload)
        for done in node._call(stack.fragments, arrived, now):
            out.append(_new_delivered(stack.group, done.origin, done.seq, done.payload))
    elif kind in (KIND_ORDERED, KIND_ORDERED_FRAGMENT, KIND_ORDER_CLOCK):
        order = stack.order
        if order is None:  # a peer orders a group this node does not
            node._stats.unroutable += 1
        else:
            queue.extend(node._call(order, act, now))
    else:
        node._inner(stack, act.origin, act.incarnation, act.kind, act.payload, now, queue, out)


def _on_publish(
    node: Node, stack: _Stack, act: Publish, now: float, queue: list[Any], out: list[Output]
) -> None:
    """The order layer's message for the group: the multicast carries it (counted in a
    send window, never refused by it: the order layer has numbered it already)."""
    queue.extend(node._call(stack.multicast, _new_publish(act.kind, act.payload, False), now))


def _on_deliver_unicast(
    node: Node, stack: _Stack, act: DeliverUnicast, now: float, queue: list[Any], out: list[Output]
) -> None:
    """A reliable unicast delivery, as :func:`_on_deliver`."""
    if act.kind == KIND_APP:
        out.append(UnicastDelivered(group=stack.group, sender=act.sender, payload=act.payload))
    elif act.kind == KIND_FRAGMENT:
        arrived = _new_arrived("unicast", act.sender, act.incarnation, 0, act.payload)
        for done in node._call(stack.fragments, arrived, now):
            out.append(UnicastDelivered(group=stack.group, sender=act.sender, payload=done.payload))
    else:
        node._inner(stack, act.sender, act.incarnation, act.kind, act.payload, now, queue, out)


NOTES: dict[type[Any], Note] = {
    # (a broker ignores other groups'); then the app gets the view and who came or went
    ViewChanged: Note((MULTICAST, ELECTION, FRAGMENTS, BROKER), then=Node._on_view, to_app=False),
    MemberRemoved: Note((UNICAST,), as_event=_peer_gone, then=Node._on_removed),
    # the client last: it cuts its own cap at a supply drop only while it has no broker
    LeaderLost: Note((ELECTION, CLIENT)),
    # The client last: a node that becomes broker activates its broker before its own
    # client re-sends its bid to it, or the bid is dropped (issue 16).
    LeaderElected: Note((MEMBERSHIP, BROKER, LEAD, CLIENT), then=Node._follow_cluster_leader),
    Deliver: Note(then=_on_deliver, to_app=False),
    # the order layer's messages (totally ordered groups), for the multicast to carry
    Publish: Note(then=_on_publish, to_app=False),
    DeliverUnicast: Note(then=_on_deliver_unicast, to_app=False),
}
"""Notification type -> what the node does with it. A type not here goes to the app only."""

_DELIVER_ALONE = NOTES[Deliver] == Note(then=_on_deliver, to_app=False)
"""Whether a Deliver goes to :func:`_on_deliver` alone, so the hot paths of
:meth:`Node.multicast` and :meth:`Node.receive` may hand the app its delivery at once
(else the general path)."""
_DATA_TO_MULTICAST_ALONE = ROUTES[Data] == Route(MULTICAST) and _DELIVER_ALONE
"""Whether :meth:`Node.receive`'s hot path for Data holds: Data goes to the multicast
machine alone, and a Deliver to :func:`_on_deliver` alone (else the general path)."""
