"""Unicast fan-out groups: who a group send goes to where IP multicast is unavailable.

Theory of operation
-------------------
Many networks carry no IP multicast (public clouds, most VPNs, Wi-Fi that
filters it). There a group is a list of **seed** addresses, and a transport
sends each group datagram (:class:`~powergrid.events.TransmitGroup`) as one
unicast per address of the group's **fan-out set**, as Corosync's ``udpu``,
JGroups' ``TCPPING`` and memberlist do. :class:`FanOut` decides that set; it
is pure (no sockets, no clock), and the UDP transports
(:mod:`powergrid.transports._core`) and the in-memory networks
(:mod:`powergrid.sim.memory`) both ask it, so the rule is written once:

    fan-out set of group g = (seeds | members of the last view of g) - {this node}

* **Seeds** are configured: the addresses where a node looks for its groups
  before it is in any view (the same seeds serve every group; a node drops
  datagrams of groups it is not in, so a seed outside a group costs bandwidth,
  not correctness). Give every node the same list, or at least one live
  long-lived member of each group (a broker-capable node of each cluster).
* **Learned members**: on every :class:`~powergrid.events.ViewChanged` the node
  outputs, :meth:`FanOut.install` replaces the group's learned members with
  the view's members; :meth:`FanOut.forget` drops them when the node leaves the
  group. A member removed from the view stops getting the group's datagrams
  (unless it is a seed), which is what a partitioned-off member needs to
  notice it is out; merges after a partition go through the seeds.
* **Only authenticated views teach.** A node outputs ``ViewChanged`` only for
  a view carried by datagrams it accepted; with a keyring
  (:class:`~powergrid.node.NodeConfig` ``keyring``) those are datagrams whose
  tag checked out, so a forged view never gets that far. Without a keyring a
  view is not authenticated (anyone on the path can forge one and turn the
  node into an amplifier towards any address), so a ``FanOut`` built with
  ``learn=False`` ignores views: it sends to the seeds only, a static
  membership like Corosync ``udpu``. The transports pass ``learn`` = "the
  endpoint has a keyring". Nothing else is ever an address a group send goes to.

The set is kept sorted (the order a transport sends in) and recomputed only
when a view changes it, so a group send costs one dictionary lookup.
"""

from __future__ import annotations

from collections.abc import Iterable

from powergrid.errors import ConfigError
from powergrid.events import View
from powergrid.types import NodeId, node_id

__all__ = ["FanOut", "parse_seed", "parse_seeds"]


def parse_seed(text: str, what: str = "fanout_seeds") -> NodeId:
    """The node id of a seed written ``host:port`` (an IPv4 dotted quad, or an IPv6
    address in brackets, ``[fd00::5]:9001``; port 1..65535).

    Raises :class:`ConfigError` naming ``what`` (the setting) when it is not that.
    """
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:  # an IPv6 address without brackets: its port cannot be told apart
        host = ""
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"{what}: {text!r} is not host:port, e.g. 10.0.0.5:9001 or [fd00::5]:9001"
        )
    try:
        return node_id(host, int(port))
    except ConfigError as exc:
        raise ConfigError(f"{what}: {text!r}: {exc}") from exc


def parse_seeds(texts: Iterable[str], what: str = "fanout_seeds") -> tuple[NodeId, ...]:
    """The sorted, distinct node ids of seeds written ``host:port``; raises like :func:`parse_seed`.

    A bare string is refused (it would be read letter by letter): give a list.
    """
    if isinstance(texts, str):
        raise ConfigError(f"{what} must be a list of host:port strings, not one string")
    return tuple(sorted({parse_seed(t, what) for t in texts}))


class FanOut:
    """The fan-out set of each group of one node (see the module docstring).

    :param me: this node's id; never in a fan-out set.
    :param seeds: configured seed ids (any order, duplicates allowed).
    :param learn: learn members from installed views (only when views are
        authenticated, i.e. the node has a keyring); False: seeds only.
    """

    def __init__(self, me: NodeId, seeds: Iterable[int], *, learn: bool) -> None:
        self._me = me
        self._seeds = frozenset(NodeId(s) for s in seeds)
        self._learn = learn
        self._base = tuple(sorted(self._seeds - {me}))
        self._members: dict[int, frozenset[int]] = {}  # group -> last view's members
        self._targets: dict[int, tuple[NodeId, ...]] = {}  # group -> cached sorted set

    @property
    def seeds(self) -> tuple[NodeId, ...]:
        """The configured seeds, sorted (this node included if it is one)."""
        return tuple(sorted(self._seeds))

    @property
    def learns(self) -> bool:
        """Whether installed views add members (False: seeds only)."""
        return self._learn

    def targets(self, group: int) -> tuple[NodeId, ...]:
        """The ids a datagram to ``group`` goes to, sorted: seeds | view members - this node."""
        got = self._targets.get(group)
        if got is None:
            members = self._members.get(group)
            if members is None:
                got = self._base
            else:
                got = tuple(NodeId(n) for n in sorted((self._seeds | members) - {self._me}))
            self._targets[group] = got
        return got

    def install(self, view: View) -> bool:
        """Take ``view`` (from a ``ViewChanged`` the node output) as its group's members.

        Returns True if the group's fan-out set changed. Does nothing when not learning.
        """
        if not self._learn:
            return False
        before = self.targets(view.group)
        self._members[view.group] = frozenset(m.node for m in view.members)
        self._targets.pop(view.group, None)
        return self.targets(view.group) != before

    def forget(self, group: int) -> None:
        """This node left ``group``: its fan-out set is the seeds again."""
        self._members.pop(group, None)
        self._targets.pop(group, None)
