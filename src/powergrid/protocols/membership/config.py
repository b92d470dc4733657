"""Membership settings: the timeouts, and how they scale with the group's size.

Theory of operation. :class:`MembershipConfig` is a frozen record checked once
on construction (:class:`~powergrid.errors.ConfigError` says what to fix).
Every timeout a machine uses for a view of ``n`` members comes from
:meth:`MembershipConfig.tick` and :meth:`MembershipConfig.timeouts`, computed
once per installed view: ``scale(n) = 1 + size_factor * log2(n)`` stretches
the detection timeouts logarithmically (holding the group's false-suspicion
rate fixed as ``n`` grows), and ``tick(n)`` stretches the leader's heartbeat
so that the acks it draws stay within ``max_ack_rate`` per second, with
:data:`SUSPECT_TICKS` and :data:`LEADER_TICKS` keeping as many losses in a row
needed as at the unstretched defaults (docs/protocols/membership.md,
*Scaling with group size*).
"""

from __future__ import annotations

import math

import attrs

from powergrid._checks import config_problem, integer, real

__all__ = ["LEADER_TICKS", "SUSPECT_TICKS", "MembershipConfig"]

SUSPECT_TICKS = 2
"""A member is suspected no sooner than this many (stretched) ticks after its last ack."""
LEADER_TICKS = 4
"""A member reports its leader lost no sooner than this many (stretched) ticks of silence."""


@attrs.frozen(kw_only=True)
class MembershipConfig:
    """Settings of :class:`MembershipMachine`. Times in seconds.

    Timeouts marked *scaled* are multiplied by ``scale(n)`` for a view of
    ``n`` members. Raises :class:`~powergrid.errors.ConfigError` for a value
    out of range or values that contradict each other.
    """

    heartbeat_interval: float = attrs.field(default=0.2, validator=real)
    """The leader multicasts a heartbeat, and checks its members, this often."""
    ack_interval: float = attrs.field(default=0.8, validator=real)
    """A member acks about this often, not every heartbeat: every ``ack_every(n)``-th
    heartbeat (``round(ack_interval / tick(n))``, at least 1); 0 or anything up to
    ``heartbeat_interval``: every heartbeat. Sparse acks keep the traffic down while the
    leader's frequent heartbeats keep a lost leader quick to detect."""
    dense_acks_for: float = attrs.field(default=10.0, validator=real)
    """With sparse acks, a member acks every heartbeat for this long after a sign of loss:
    two heartbeats of its leader missed (more than 2.5 ticks since the last), or a probe
    of it (the leader suspected it). A quiet, lossless group acks sparsely; a lossy one
    acks every beat, so one lost ack does not make the leader suspect a live member."""
    ack_wait: float = attrs.field(default=0.05, validator=real)
    """With sparse acks, the leader checks its members this long after each heartbeat
    (the acks it drew are in by then) as well as at the heartbeat: a member whose ack is
    due and missing is suspected at once, not a tick later. 0: at the heartbeat only."""
    probe_interval: float = attrs.field(default=0.1, validator=real)
    """Suspects are probed (directly and through helpers) this often, from their
    suspicion until they answer or are removed; at most ``heartbeat_interval``."""
    suspect_timeout: float = attrs.field(default=0.3, validator=real)
    """*Scaled.* A member silent this long is suspected and probed."""
    removal_timeout: float = attrs.field(default=0.3, validator=real)
    """*Scaled.* A member still suspected this long after its suspicion began is removed."""
    indirect_probes: int = attrs.field(default=2, validator=integer)
    """Other members asked, at every tick, to probe a suspect on the leader's behalf."""
    leader_timeout: float = attrs.field(default=0.5, validator=real)
    """*Scaled.* A member that hears nothing from its leader this long reports LeaderLost."""
    admit_wait: float = attrs.field(default=0.02, validator=real)
    """The leader admits the joins queued this long after the first of them (one view for
    the joins that come together), or at its tick if that comes first; at most
    ``heartbeat_interval``."""
    join_timeout: float = attrs.field(default=0.5, validator=real)
    """A joining node that hears of no leader at all this long reports LeaderLost(0, 0)."""
    join_retry: float = attrs.field(default=0.2, validator=real)
    """First delay before a join request is repeated."""
    join_backoff: float = attrs.field(default=2.0, validator=real)
    """Factor applied to the join delay after each retry."""
    join_retry_max: float = attrs.field(default=2.0, validator=real)
    """Cap of the join delay."""
    join_jitter: float = attrs.field(default=0.2, validator=real)
    """Each join delay is lengthened by up to this fraction of itself, at random."""
    size_factor: float = attrs.field(default=0.1, validator=real)
    """``scale(n) = 1 + size_factor * log2(n)``; 0 turns scaling off."""
    max_ack_rate: float = attrs.field(default=400.0, validator=real)
    """HeartbeatAcks per second a leader's heartbeats may draw: the tick of a view of
    ``n`` members is ``max(heartbeat_interval, (n - 1) / max_ack_rate)``; 0 turns the
    stretching off."""
    departure_memory: int = attrs.field(default=16, validator=integer)
    """Views for which the leader keeps announcing a departure and its reason."""
    lone_fast_for: float = 3.0
    """A leader alone in its view still heartbeats every tick for this long after it took
    office (then every ``lone_heartbeat_interval``), so a twin of its epoch hears it
    within a tick of their contact (election rule 7)."""
    lone_heartbeat_interval: float = 1.0
    """A leader alone in its view heartbeats this often instead of every tick: no member
    acks it; it only tells nodes that follow the leader without being in its view (after a
    partition) to ask for the view. Not scaled, not stretched."""

    def __attrs_post_init__(self) -> None:
        floats = (
            "heartbeat_interval",
            "ack_interval",
            "ack_wait",
            "dense_acks_for",
            "lone_fast_for",
            "probe_interval",
            "suspect_timeout",
            "removal_timeout",
            "leader_timeout",
            "admit_wait",
            "join_timeout",
            "join_retry",
            "join_backoff",
            "join_retry_max",
            "join_jitter",
            "size_factor",
            "max_ack_rate",
            "lone_heartbeat_interval",
        )
        for name in floats:
            value = getattr(self, name)
            if not math.isfinite(value):
                raise config_problem(self, f"{name} is {value}; set it to a finite number")
        hb = self.heartbeat_interval
        if hb <= 0:
            raise config_problem(self, f"heartbeat_interval is {hb}; set it above 0 seconds")
        if self.suspect_timeout <= hb:
            raise config_problem(
                self,
                f"suspect_timeout ({self.suspect_timeout}) must exceed heartbeat_interval "
                f"({hb}), or members are suspected between two heartbeats; "
                "set it to 2-3 heartbeat intervals or more",
            )
        if self.removal_timeout < hb:
            raise config_problem(
                self,
                f"removal_timeout ({self.removal_timeout}) is below heartbeat_interval "
                f"({hb}): a suspect would be removed before one probe; set it >= {hb}",
            )
        if self.leader_timeout <= hb:
            raise config_problem(
                self,
                f"leader_timeout ({self.leader_timeout}) must exceed heartbeat_interval "
                f"({hb}), or the leader is lost between two heartbeats; "
                "set it to 3 heartbeat intervals or more",
            )
        if not 0 <= self.admit_wait <= hb:
            raise config_problem(
                self,
                f"admit_wait is {self.admit_wait}; set it within 0..heartbeat_interval ({hb})",
            )
        if self.join_timeout < self.leader_timeout:
            raise config_problem(
                self,
                f"join_timeout ({self.join_timeout}) is below leader_timeout "
                f"({self.leader_timeout}): a joiner would start an election before a member "
                "would; set join_timeout >= leader_timeout",
            )
        if self.join_retry <= 0:
            raise config_problem(self, f"join_retry is {self.join_retry}; set it above 0 seconds")
        if self.join_backoff < 1:
            raise config_problem(self, f"join_backoff is {self.join_backoff}; set it to 1 or more")
        if self.join_retry_max < self.join_retry:
            raise config_problem(
                self,
                f"join_retry_max ({self.join_retry_max}) is below join_retry "
                f"({self.join_retry}); set join_retry_max >= join_retry",
            )
        if not 0 <= self.join_jitter <= 1:
            raise config_problem(self, f"join_jitter is {self.join_jitter}; set it within 0..1")
        if self.size_factor < 0:
            raise config_problem(self, f"size_factor is {self.size_factor}; set it to 0 or more")
        if self.max_ack_rate < 0:
            raise config_problem(
                self, f"max_ack_rate is {self.max_ack_rate}; set it to 0 (no limit) or more"
            )
        if not 0 < self.probe_interval <= hb:
            raise config_problem(
                self,
                f"probe_interval ({self.probe_interval}) must be within (0, heartbeat_interval "
                f"= {hb}]: suspects are probed at least once a tick",
            )
        if self.ack_interval < 0:
            raise config_problem(self, f"ack_interval is {self.ack_interval}; set it to 0 or more")
        for name in ("dense_acks_for", "lone_fast_for"):  # 0: never
            if getattr(self, name) < 0:
                raise config_problem(
                    self, f"{name} is {getattr(self, name)}; set it to 0 (never) or more"
                )
        if not 0 <= self.ack_wait < hb / 2:
            raise config_problem(
                self,
                f"ack_wait ({self.ack_wait}) must be within [0, heartbeat_interval / 2 = "
                f"{hb / 2}): the check after a heartbeat must come before the next one, and "
                "a member's ack due at a heartbeat is judged against that half-tick",
            )
        if self.lone_heartbeat_interval < hb:
            raise config_problem(
                self,
                f"lone_heartbeat_interval ({self.lone_heartbeat_interval}) is below "
                f"heartbeat_interval ({hb}); set it >= {hb} (a lone leader beats no more "
                "often than one with members)",
            )
        if self.indirect_probes < 0:
            raise config_problem(
                self, f"indirect_probes is {self.indirect_probes}; set it to 0 or more"
            )
        if self.departure_memory < 1:
            raise config_problem(
                self, f"departure_memory is {self.departure_memory}; set it to 1 or more"
            )

    def scale(self, n: int) -> float:
        """``1 + size_factor * log2(n)``, the factor of the scaled timeouts for ``n`` members."""
        return 1.0 + self.size_factor * math.log2(max(n, 1))

    def tick(self, n: int) -> float:
        """The leader's heartbeat period for ``n`` members (seconds): ``heartbeat_interval``,
        stretched so that the acks it draws stay within ``max_ack_rate`` per second."""
        rate = self.max_ack_rate
        if not rate:
            return self.heartbeat_interval
        return max(self.heartbeat_interval, (n - 1) / rate)

    def ack_every(self, n: int) -> int:
        """How many heartbeats a member of a view of ``n`` lets pass per ack (at least 1)."""
        return max(1, round(self.ack_interval / self.tick(n)))

    def timeouts(self, n: int) -> tuple[float, float, float]:
        """``(suspect, removal, leader)`` timeouts for ``n`` members (seconds).

        Each is its config value times ``scale(n)``; with a stretched tick the
        suspect timeout is at least :data:`SUSPECT_TICKS` ticks and the leader
        timeout at least :data:`LEADER_TICKS` ticks, so that as many heartbeats
        or acks must be lost in a row as with the unstretched defaults. With
        sparse acks (``ack_every(n) > 1``) the suspect timeout is at least the
        ack period, ``ack_every(n)`` ticks: one ack due and missing.
        """
        s = self.scale(n)
        tick = self.tick(n)
        return (
            max(self.suspect_timeout * s, SUSPECT_TICKS * tick, self.ack_every(n) * tick),
            self.removal_timeout * s,
            max(self.leader_timeout * s, LEADER_TICKS * tick),
        )
