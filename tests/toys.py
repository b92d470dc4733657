"""Toy endpoints for the transport and harness tests.

They speak real datagrams (``powergrid.wire`` ``Data`` messages carrying an
8-byte value) so the networks' per-type statistics see real headers, and they
are deterministic given their inputs and the ``random.Random`` they are handed.
"""

from __future__ import annotations

import random
import socket

import attrs

from powergrid.errors import DecodeError
from powergrid.events import JoinGroup, LeaveGroup, Output, Transmit, TransmitGroup
from powergrid.sim.fuzz import FuzzNetwork, NodeCrashed, NodeStarted
from powergrid.types import GroupId, Incarnation, NodeId
from powergrid.wire import KIND_APP, Data, decode, encode

GROUP = GroupId(1)


def datagram(sender: int, value: int, *, seq: int = 1, inc: int = 1, group: int = GROUP) -> bytes:
    """A Data datagram from ``sender`` carrying ``value``."""
    return encode(group, sender, inc, Data(seq=seq, kind=KIND_APP, payload=value.to_bytes(8)))


def value_of(data: bytes) -> tuple[int, int]:
    """``(sender, value)`` of a toy datagram."""
    env = decode(data)
    assert isinstance(env.message, Data)
    return env.sender, int.from_bytes(env.message.payload)


@attrs.frozen(kw_only=True)
class Got:
    """Notification: a toy received ``value`` from ``sender``."""

    sender: int
    value: int


@attrs.frozen(kw_only=True)
class Learned:
    """Notification: a gossip node now knows ``value`` as the maximum."""

    node: int
    incarnation: int
    value: int


class Recorder:
    """Records every datagram with its arrival time; sends what it is told at start.

    ``on_start`` outputs are returned by ``start``; each received datagram is
    also reported as a :class:`Got` notification.
    """

    def __init__(self, node: int, *, on_start: list[Output] | None = None) -> None:
        self._id = NodeId(node)
        self.on_start = on_start or []
        self.received: list[tuple[float, int, int]] = []
        self.calls = 0

    @property
    def node_id(self) -> NodeId:
        return self._id

    def start(self, now: float) -> list[Output]:
        self.calls += 1
        return list(self.on_start)

    def receive(self, data: bytes, now: float) -> list[Output]:
        self.calls += 1
        sender, value = value_of(data)
        self.received.append((now, sender, value))
        return [Got(sender=sender, value=value)]

    def handle_deadline(self, now: float) -> list[Output]:
        self.calls += 1
        return []

    def next_deadline(self) -> float | None:
        return None


class Echo(Recorder):
    """A recorder that sends every datagram back to its sender (value + 1), up to ``limit``."""

    def __init__(self, node: int, *, limit: int = 10, on_start: list[Output] | None = None):
        super().__init__(node, on_start=on_start)
        self.limit = limit

    def receive(self, data: bytes, now: float) -> list[Output]:
        out = super().receive(data, now)
        sender, value = self.received[-1][1:]
        if value < self.limit:
            return [*out, Transmit(to=NodeId(sender), data=datagram(self._id, value + 1))]
        return out


class Ticker:
    """Wakes every ``period`` seconds after start; multicasts its tick count if ``talk``.

    ``deadlines`` lets a test override what ``next_deadline`` says.
    """

    def __init__(self, node: int, *, period: float = 1.0, talk: bool = False) -> None:
        self._id = NodeId(node)
        self.period = period
        self.talk = talk
        self.wakes: list[float] = []
        self.received: list[tuple[float, int, int]] = []
        self.deadline: float | None = None
        self.calls = 0

    @property
    def node_id(self) -> NodeId:
        return self._id

    def start(self, now: float) -> list[Output]:
        self.calls += 1
        self.deadline = now + self.period
        return [JoinGroup(group=GROUP)]

    def receive(self, data: bytes, now: float) -> list[Output]:
        self.calls += 1
        sender, value = value_of(data)
        self.received.append((now, sender, value))
        return []

    def handle_deadline(self, now: float) -> list[Output]:
        self.calls += 1
        assert self.deadline is not None and now >= self.deadline, "woken early"
        self.wakes.append(now)
        self.deadline = now + self.period
        if self.talk:
            return [TransmitGroup(group=GROUP, data=datagram(self._id, len(self.wakes)))]
        return []

    def next_deadline(self) -> float | None:
        return self.deadline


class Member(Recorder):
    """A recorder that joins :data:`GROUP` at start, leaves after ``leave_after`` datagrams."""

    def __init__(self, node: int, *, leave_after: int | None = None) -> None:
        super().__init__(node, on_start=[JoinGroup(group=GROUP)])
        self.leave_after = leave_after

    def receive(self, data: bytes, now: float) -> list[Output]:
        out = super().receive(data, now)
        if self.leave_after is not None and len(self.received) == self.leave_after:
            return [*out, LeaveGroup(group=GROUP)]
        return out


class MaxGossip:
    """Every node learns the largest initial value: periodic multicast of the maximum known.

    Planted bugs for the harness tests:

    * ``forget``: with this probability per datagram received, the node falls
      back to its own initial value (a safety bug: its learned value drops);
    * ``deaf_after_restart``: an incarnation above 1 ignores every datagram (a
      liveness bug: a restarted node never converges).
    """

    def __init__(
        self,
        node: NodeId,
        incarnation: Incarnation,
        *,
        value: int,
        rng: random.Random,
        period: float = 0.1,
        forget: float = 0.0,
        deaf_after_restart: bool = False,
    ) -> None:
        self._id = node
        self.incarnation = incarnation
        self.initial = value
        self.learned = value
        self._rng = rng
        self.period = period
        self.forget = forget
        self.deaf = deaf_after_restart and incarnation > 1
        self._deadline: float | None = None
        self._seq = 0

    @property
    def node_id(self) -> NodeId:
        return self._id

    def _learn(self, value: int) -> Learned:
        self.learned = value
        return Learned(node=self._id, incarnation=self.incarnation, value=value)

    def _arm(self, now: float) -> None:
        self._deadline = now + self.period * (0.5 + self._rng.random())

    def start(self, now: float) -> list[Output]:
        self._arm(now)
        return [JoinGroup(group=GROUP), self._learn(self.initial)]

    def receive(self, data: bytes, now: float) -> list[Output]:
        if self.deaf:
            return []
        try:
            _, value = value_of(data)
        except (DecodeError, AssertionError):
            return []
        if self.forget and self._rng.random() < self.forget:
            return [self._learn(self.initial)] if self.learned != self.initial else []
        if value > self.learned:
            return [self._learn(value)]
        return []

    def handle_deadline(self, now: float) -> list[Output]:
        self._arm(now)
        self._seq += 1
        data = datagram(self._id, self.learned, seq=self._seq, inc=self.incarnation)
        return [TransmitGroup(group=GROUP, data=data)]

    def next_deadline(self) -> float | None:
        return self._deadline


class MonotoneLearning:
    """Safety: within one incarnation a node's learned value never drops,
    and it is always some node's initial value."""

    name = "monotone-learning"

    def __init__(self, initial: dict[int, int]) -> None:
        self._initial = set(initial.values())
        self._last: dict[tuple[int, int], int] = {}
        self._problems: list[str] = []

    def observe(self, time: float, node: NodeId, output: object) -> None:
        if isinstance(output, Learned):
            key = (output.node, output.incarnation)
            last = self._last.get(key)
            if last is not None and output.value < last:
                self._problems.append(
                    f"node {node} (inc {output.incarnation}) went from {last} to {output.value}"
                )
            if output.value not in self._initial:
                self._problems.append(f"node {node} learned {output.value}, nobody's value")
            self._last[key] = output.value
        elif isinstance(output, NodeCrashed | NodeStarted):
            self._last.pop((output.node, output.incarnation), None)

    def check(self, network: FuzzNetwork) -> list[str]:
        problems, self._problems = self._problems, []
        return problems

    def check_final(self, network: FuzzNetwork) -> list[str]:
        return self.check(network)


class Converged:
    """Liveness: after the liveness phase every node is up and knows the maximum."""

    name = "converged"

    def __init__(self, initial: dict[int, int]) -> None:
        self._initial = initial

    def observe(self, time: float, node: NodeId, output: object) -> None:
        pass

    def check(self, network: FuzzNetwork) -> list[str]:
        return []

    def check_final(self, network: FuzzNetwork) -> list[str]:
        best = max(self._initial.values())
        problems = []
        for node in sorted(self._initial):
            ep = network.endpoint(node)
            if not isinstance(ep, MaxGossip):
                problems.append(f"node {node} is not running")
            elif ep.learned != best:
                problems.append(f"node {node} knows {ep.learned}, the maximum is {best}")
        return problems


def free_port() -> int:
    """A UDP port on 127.0.0.1 the kernel reports free now (for real-process tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
