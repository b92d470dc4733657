"""Sending a round's messages twice: a lost Price, Clearing or Aggregate no longer costs a round.

Theory of operation
-------------------
Prices (broker → cluster), Clearings (lead → broker group) and Aggregates (broker →
lead) travel as plain datagrams, once per round. One that is lost leaves its receiver on the
previous round's cap or budget for a whole ``round_interval``; if its share
fell meanwhile while others' rose, the caps in force exceed the supply by the
difference for that round (the `partition` scenario's 48 W·s, a lost
Clearing at one broker); a lost first Aggregate to a new lead leaves its cluster
out of the lead's first round, its servers unadmitted a round longer (the demo's
and `solar`'s starts, 5 and 8 servers for 1 s). So the sender sends each round's multicasts once
more ``after`` seconds later (:class:`Repeater`): receivers already drop a
round they applied (clients and brokers compare round numbers), so a repeat
changes nothing where the first copy arrived, and where it was lost the
receiver is late by ``after`` instead of a round. At a loss rate ``p`` per
receiver, a round is missed with probability ``p**2`` instead of ``p``
(independent losses; a partition drops both, and is covered by leases).
This is a mitigation of loss, not make-before-break: a cut is still not
confirmed before the raise that it pays for is released.

A newer round replaces a pending repeat (the older one is stale anyway).
Pure: the owning machine asks :meth:`Repeater.due` from its deadline handler
and folds :attr:`Repeater.at` into its ``next_deadline``.
"""

from __future__ import annotations

from typing import Any

from powergrid._checks import config_problem
from powergrid.events import Multicast

__all__ = ["Repeater", "check_round_settings", "earliest"]


def check_round_settings(cfg: Any) -> None:
    """The round settings a broker's and the lead's configs share: ``band`` in [0, 1),
    ``gather`` in (0, ``round_interval``], ``repeat_after`` in [0, ``round_interval``)
    (0: no repeats). Raises :class:`~powergrid.errors.ConfigError` naming
    ``Class.field``."""
    if not 0 <= cfg.band < 1:
        raise config_problem(cfg, f"band must be in [0, 1), got {cfg.band}")
    if not 0 < cfg.gather <= cfg.round_interval:
        raise config_problem(
            cfg, f"gather must be in (0, round_interval={cfg.round_interval}] s, got {cfg.gather}"
        )
    if not 0 <= cfg.repeat_after < cfg.round_interval:
        raise config_problem(
            cfg,
            f"repeat_after must be in [0, round_interval={cfg.round_interval}) s, "
            f"got {cfg.repeat_after}",
        )


class Repeater:
    """The multicasts of the last round, to send once more ``after`` seconds later
    (``after`` 0: never). Raises nothing; the owner validates ``after``."""

    __slots__ = ("_after", "_sends", "at")

    def __init__(self, after: float) -> None:
        self._after = after
        self._sends: list[object] = []
        self.at: float | None = None
        """When the pending repeat is due (None: nothing pending)."""

    def arm(self, actions: list[object], now: float, kind: type = Multicast) -> None:
        """Remember the actions of type ``kind`` among ``actions`` (a round's) for a
        repeat (``Multicast`` by default; the broker's aggregate is a ``Send``)."""
        sends = [a for a in actions if type(a) is kind]
        if sends and self._after > 0:
            self._sends = sends
            self.at = now + self._after

    def cancel(self) -> None:
        """Forget the pending repeat (the sender stopped: stepped down, lost its role)."""
        self._sends = []
        self.at = None

    def due(self, now: float) -> list[object]:
        """The repeat, if it is due at ``now`` (then it is forgotten); else nothing."""
        if self.at is None or now < self.at:
            return []
        sends, self._sends, self.at = self._sends, [], None
        return list(sends)


def earliest(*times: float | None) -> float | None:
    """The earliest of ``times`` that is not None (None if all are; the first of equals,
    as ``min``). A loop, not a list and ``min``: the market machines' deadlines are
    asked after every event they take."""
    best = None
    for t in times:
        if t is not None and (best is None or t < best):
            best = t
    return best
