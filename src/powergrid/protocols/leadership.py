"""Who leads a group, as one machine last obeyed it: the one staleness rule.

Theory of operation. The election machine is the authority on who leads each
group; every other machine (membership, the market's client, broker and lead
broker) learns it from :class:`~powergrid.events.LeaderElected` and from the
epochs that leaders' messages carry. They all apply one rule, written here
once: an announcement whose epoch is older than the one followed is stale
(fencing, compared as serial numbers by :func:`~powergrid.types.epoch_newer`);
one of the same epoch and leader changes nothing; one of a newer epoch, or of
the same epoch naming another leader (twin leaders of one epoch, two sides of
a partition: the election settled it), is to be followed.

A :class:`Leadership` is a small mutable record that a machine owns; it never
decides what the machine does about a verdict (activate, deactivate, re-send
a bid), only what the verdict is. "Obey an announcement unless it is stale"
is :meth:`Leadership.obey`: judge, and follow whatever is not stale. It reads
no clock and keeps no history.
"""

from __future__ import annotations

import enum

from powergrid.types import Epoch, NodeId, epoch_newer

__all__ = ["Leadership", "Verdict"]

_EPOCH_0 = Epoch(0)  # older than every real epoch: nothing is stale against it


class Verdict(enum.Enum):
    """What an announcement ``(leader, epoch)`` is to the record that hears it."""

    STALE = "stale"  # an older epoch than the one followed: drop it (fencing)
    SAME = "same"  # the leader and epoch already followed: nothing to do
    NEWER = "newer"  # another epoch not older (newer, or foreign: the election's call)
    TWIN = "twin"  # the same epoch, another leader: the election settled on it; follow it

    @property
    def follow(self) -> bool:
        """Whether the announcement is to be followed (``NEWER`` or ``TWIN``)."""
        return self is Verdict.NEWER or self is Verdict.TWIN


class Leadership:
    """The (leader, epoch) one machine follows for one group.

    ``leader`` is ``None`` and ``epoch`` is 0 until the first announcement is
    followed. Epoch 0 is older than every real epoch, so nothing is stale
    against a fresh record.
    """

    __slots__ = ("epoch", "leader")

    def __init__(self, leader: NodeId | None = None, epoch: Epoch = _EPOCH_0) -> None:
        self.leader = leader
        self.epoch = epoch

    def __repr__(self) -> str:
        return f"Leadership(leader={self.leader!r}, epoch={self.epoch!r})"

    def stale(self, epoch: int) -> bool:
        """Whether ``epoch`` is older than the one followed (fenced)."""
        return epoch_newer(self.epoch, epoch)

    def judge(self, leader: NodeId, epoch: Epoch) -> Verdict:
        """What an announcement of ``leader`` at ``epoch`` is to this record."""
        if epoch_newer(self.epoch, epoch):
            return Verdict.STALE
        if epoch != self.epoch:
            return Verdict.NEWER
        return Verdict.SAME if leader == self.leader else Verdict.TWIN

    def follow(self, leader: NodeId | None, epoch: Epoch) -> None:
        """Follow ``leader`` at ``epoch`` from now on."""
        self.leader = leader
        self.epoch = epoch

    def obey(self, leader: NodeId, epoch: Epoch) -> Verdict:
        """Judge an announcement of ``leader`` at ``epoch`` and follow it unless it is
        stale; returns the verdict, judged against the record as it was."""
        verdict = self.judge(leader, epoch)
        if verdict is not Verdict.STALE:
            self.leader = leader
            self.epoch = epoch
        return verdict

    def forget(self) -> None:
        """Follow nobody, at epoch 0 (the group's election is gone; a new one may
        start again from epoch 1)."""
        self.leader = None
        self.epoch = _EPOCH_0
