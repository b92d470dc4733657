"""Real UDP on loopback: reliable multicast goodput against raw multicast, and failover time.

**Goodput.** One trio process runs one sender and R receivers (R = 1 and 3),
each a :class:`~powergrid.node.Node` on
:func:`~powergrid.transports.trio_udp.run_node` (127.0.0.1, TTL 0, distinct
ports, one cluster). Once every receiver has a view of all R + 1 nodes, the
sender multicasts N payloads of 100 bytes with ``node.multicast``, keeping at
most ``WINDOW`` messages beyond what the slowest receiver has delivered (so it
goes as fast as the receivers keep up). The receivers take their notifications
with ``run_node(on_event=...)`` in the reader task, as the raw receivers count
theirs (a second run of each uses ``events()`` and a task per receiver
instead). Goodput = N / seconds from the first send to the last delivery at
the last receiver; every receiver's deliveries from the sender are checked to
be exactly 1..N in order with the right payloads. The transport bundles what a
task sends in one scheduling step (``UdpConfig.bundle_size``, on by default:
the sender's multicasts leave about 10 to a UDP datagram, see
docs/transports.md); each powergrid run is repeated with ``bundle_size=0``
(one UDP datagram per message, as the raw sender sends) for the
``*_unbundled`` figures. With loss, each receiver's endpoint is wrapped and
drops 5% (and, in a second run, 1%) of incoming datagrams (seeded) before
``node.receive``; repair is the
protocol's (its counters are reported, and the same run is repeated with
``nak_interval`` 0.01 s for comparison).

**Flow control** (multicast rule 27): the same setup with 3 receivers, one of
which processes at most a tenth of the 3-receiver lossless goodput in datagrams
per second (they wait in a queue of 2,000, a socket buffer, and are dropped
beyond it); no app-level window, the sender just
``await``s ``multicast`` (which waits while the send window, 256, is full);
``max_buffer`` 1,000; N/4 messages (at least 500). Reported: goodput against
the slow receiver's rate (``flow_slow_ratio``, target 0.8), messages some
receiver never delivered (``flow_slow_lost``, target 0), views without all
four nodes (``flow_slow_removals``, target 0); and the same run without flow
control (``noflow_slow_lost``).

**Raw baseline**, measured in the same run: the same socket setup without
powergrid (one non-blocking sender socket bound to its own address with
``IP_MULTICAST_IF``/TTL 0/loop on, R group sockets bound to the group address
with ``SO_REUSEADDR``/``SO_REUSEPORT``, ``IP_ADD_MEMBERSHIP``, 4 MiB
``SO_RCVBUF``, read with ``wait_readable`` and up to 64 ``recvfrom`` per wake-
up, yielding only after a full batch, as the transport does) and the same
window: the sender sends N datagrams of 100 bytes to the group; rate =
datagrams received by the slowest receiver / seconds. Ratios are powergrid
goodput / raw rate with the same R (the 5%- and 1%-loss ratios, ``ratio_5pct_loss``
and ``loss_1pct_ratio``, are against the raw rate at 0% loss, 3 receivers).
The raw baseline never bundles. Everything shares one CPU in one process, the
receivers included. The CPU ratios
(``cpu_ratio_*``: raw CPU seconds / powergrid CPU seconds for the same N,
``time.process_time``) are also given, since wall-clock rates move with the
load of the machine.

**Keys.** The 3-receiver run is repeated with a keyring on every node
(``powergrid_3_signed``: HMAC-SHA256 trailer) and with ``encrypt=True``
(``powergrid_3_encrypted``: AES-256-GCM, the ``crypto`` extra);
``ratio_signed_vs_unkeyed``, ``ratio_encrypted_vs_unkeyed`` and
``ratio_encrypted_vs_signed`` are their goodputs over the unkeyed run's, and
the ``cpu_ratio_*_vs_unkeyed`` the unkeyed CPU seconds over theirs, all in the
same run.

**asyncio.** The lossless bundled runs again on asyncio (``asyncio_goodput``
against ``raw_rate_asyncio``), as ``ASYNCIO_PAIRS`` (7; ``--quick``: 1) raw and
powergrid runs interleaved (raw, powergrid, raw, powergrid ...): each ratio is
the median of the pairs' ratios, so one busy moment of the shared machine
moves one pair, not the figure. Both sides check the window the same way (a
count per receiver, ``min(counts)``) and check contents (raw: as it reads;
powergrid: after the clock stops, as the trio runs do).

**Failover.** Four ``python -m powergrid node --json`` processes on
127.0.0.1 (two broker-capable, rank 2 with the supply and rank 1; all four
bid). Once all follow the rank-2 node and have a price, it is killed with
SIGKILL; the figure is the time until *every* survivor has printed a price of
the new epoch from the lead broker that counted its bid (not a local re-clear,
nor the new broker's republished first price, which counts no bid while the
servers keep their caps on their leases), as seen by this script reading their
stdout. Median over 10 runs (``--quick``: 1), with the median of each phase:
every survivor follows the new cluster broker (detection + cluster election),
every survivor has the republished price (``republished``), the new broker
leads the broker group (its join there + the lead-broker election), the price
(the first clearing).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import socket
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
import trio
from _common import emit, free_port, parse_args

from powergrid.auth import Keyring
from powergrid.cli.processes import NodeProcesses
from powergrid.node import MessageDelivered, Node, NodeConfig
from powergrid.protocols.fragments import FRAGMENT_DATA, fragment_count
from powergrid.protocols.multicast import MulticastConfig
from powergrid.transports.asyncio_udp import run_node as run_node_asyncio
from powergrid.transports.trio_udp import UdpConfig, run_node

HOST = "127.0.0.1"
PAYLOAD = 100
WINDOW = 256
BATCH = 64
ASYNCIO_PAIRS = 7
"""Interleaved raw/powergrid pairs of each asyncio goodput figure (its median)."""
TRIO_PAIRS = 5
"""Interleaved raw/powergrid pairs of the lossless trio goodput runs (the median ratio)."""


LARGE = 1 << 20
"""Bytes of each message of the large-message run (the default ``max_message``)."""
LARGE_WINDOW = 2
"""Large messages in flight beyond what the slowest receiver delivered (about 1,600
fragments, a 2 MiB window)."""


def payload(i: int, size: int = PAYLOAD) -> bytes:
    return f"{i:010d}".encode().ljust(size, b".")


def check_delivered(got: list[list[tuple[int, bytes]]], n: int, size: int = PAYLOAD) -> None:
    """Every receiver delivered exactly messages 0..n-1 of ``size`` bytes, in order, each
    numbered by its first seq (a large message takes :func:`fragment_count` seqs)."""
    span = fragment_count(size)
    expected = [(i * span + 1, payload(i, size)) for i in range(n)]
    for g in got:
        assert g == expected, "out of order or incomplete"


# ------------------------------------------------------------------ powergrid


class Lossy:
    """A Node whose incoming datagrams are dropped with probability ``loss`` (seeded)."""

    def __init__(self, node: Node, loss: float, seed: int) -> None:
        self.node = node
        self.loss = loss
        self.rng = random.Random(seed)
        self.dropped = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.node, name)

    def receive(self, data: bytes, now: float) -> list[object]:
        if self.rng.random() < self.loss:
            self.dropped += 1
            return []
        return list(self.node.receive(data, now))


class _Tally:
    """What the receivers of one goodput run delivered from the sender, in order, and
    when the last of them had all ``n`` (shared by the trio and asyncio runs).
    ``progress`` is the loop's event, set on every delivery or view change; a run
    waits on it (trio: a new event each time; asyncio: cleared)."""

    def __init__(self, receivers: int, n: int, sender: int, cluster: int, progress: Any):
        self.got: list[list[tuple[int, bytes]]] = [[] for _ in range(receivers)]
        self.counts = [0] * receivers  # len(got[i]), kept as the raw runs keep theirs
        self.views = [0] * receivers
        self.n, self.sender, self.cluster = n, sender, cluster
        self.progress = progress
        self.t_end = 0.0

    def take(self, i: int, note: object) -> None:
        if isinstance(note, MessageDelivered):
            if note.sender == self.sender:
                self.got[i].append((note.seq, note.payload))
                self.counts[i] += 1
                if self.counts[i] == self.n:
                    self.t_end = max(self.t_end, time.perf_counter())
                self.progress.set()
        elif type(note).__name__ == "ViewChanged":
            view = note.view  # type: ignore[attr-defined]
            if view.group == self.cluster and view.leader == self.sender:
                self.views[i] = len(view.members)
            self.progress.set()


async def powergrid_goodput(
    receivers: int,
    n: int,
    loss: float,
    *,
    inline: bool = True,
    multicast: MulticastConfig | None = None,
    bundle_size: int | None = None,
    fanout: bool = False,
    seal: str = "none",
    size: int = PAYLOAD,
    window: int = WINDOW,
    host: str = "127.0.0.1",
) -> dict[str, Any]:
    """N multicasts of ``size`` bytes from one sender to ``receivers`` nodes, at most
    ``window`` beyond the slowest receiver; goodput in messages/s and bytes/s.

    ``seal``: ``"none"`` (unkeyed), ``"signed"`` (a keyring: HMAC-SHA256 on every
    datagram) or ``"encrypted"`` (a keyring with ``encrypt=True``: AES-256-GCM).

    ``inline``: the receivers take their notifications with ``run_node``'s
    ``on_event`` callback, in the reader task, as the raw receivers do; else
    from ``events()`` in a task of their own. ``multicast``: the multicast
    settings of every node (default: the defaults). ``bundle_size``: the
    transport's (default: its default; 0: no bundling). ``fanout``: no IP
    multicast; every node lists every node as a seed (``UdpConfig.fanout_seeds``,
    the static membership of Corosync udpu), so a group send is one unicast per
    other node. ``host``: the nodes' address (``"::1"``: IPv6 loopback, with
    ``fanout``, since loopback carries no IPv6 multicast).
    """
    udp = UdpConfig(ttl=0, group_port_base=free_port())
    if bundle_size is not None:
        udp = attrs.evolve(udp, bundle_size=bundle_size)
    mc = multicast or MulticastConfig()
    cfgs = [NodeConfig(host=host, port=free_port(host), broker_capable=True, rank=1, multicast=mc)]
    cfgs += [NodeConfig(host=host, port=free_port(host), multicast=mc) for _ in range(receivers)]
    if seal != "none":
        keyed = {"keyring": BENCH_RING, "encrypt": seal == "encrypted"}
        cfgs = [attrs.evolve(c, **keyed) for c in cfgs]
    if fanout:
        seeds = [f"[{c.host}]:{c.port}" if ":" in c.host else f"{c.host}:{c.port}" for c in cfgs]
        udp = attrs.evolve(udp, fanout_seeds=seeds)
    tally = _Tally(receivers, n, cfgs[0].node_id, cfgs[0].cluster, trio.Event())
    got, counts, views, take = tally.got, tally.counts, tally.views, tally.take

    async with trio.open_nursery() as nursery:
        handles = []
        for k, cfg in enumerate(cfgs):
            ep: Any = Node(cfg, incarnation=1, rng=random.Random(k))
            if k > 0 and loss > 0:
                ep = Lossy(ep, loss, seed=100 + k)
            on_event = None
            if k > 0 and inline:
                on_event = functools.partial(take, k - 1)
            elif k == 0:
                on_event = _ignore  # the sender's own deliveries: nobody reads them
            handles.append(await nursery.start(_serve, ep, udp, on_event))
        sender, rx = handles[0], handles[1:]

        async def watch(i: int) -> None:
            async for note in rx[i].events():
                take(i, note)

        if not inline:
            for i in range(receivers):
                nursery.start_soon(watch, i)
        with trio.fail_after(30):
            while min(views) < receivers + 1:
                tally.progress = trio.Event()
                await tally.progress.wait()
        t0 = time.perf_counter()
        c0 = time.process_time()
        sent0 = handles[0].stats.sent
        with trio.fail_after(120):
            for i in range(n):
                while i - min(counts) >= window:
                    tally.progress = trio.Event()
                    await tally.progress.wait()
                await sender.multicast(payload(i, size))
            while min(counts) < n:
                tally.progress = trio.Event()
                await tally.progress.wait()
        seconds = tally.t_end - t0
        cpu = time.process_time() - c0
        check_delivered(got, n, size)
        dropped = sum(h.endpoint.dropped for h in rx) if loss > 0 else 0
        repair = _repair_stats(sender, rx, cfgs[0].cluster)
        st = sender.stats
        sent = {
            "udp_datagrams": st.sent,
            "udp_datagrams_stream": st.sent - sent0,
            "bundles": st.bundles_sent,
            "bundled": st.bundled,
        }
        nursery.cancel_scope.cancel()
    return {
        "msgs_per_s": n / seconds,
        "bytes_per_s": n * size / seconds,
        "seconds": seconds,
        "cpu_s": cpu,
        "dropped": dropped,
        "repair": repair,
        "sender_udp": sent,
    }


class Slow:
    """A Node that processes at most ``rate`` datagrams per second: what arrives waits in
    a queue of ``capacity`` datagrams (a socket buffer; beyond, a datagram is dropped)
    and :meth:`serve` hands it to ``node.receive`` at that rate."""

    def __init__(self, node: Node, rate: float, capacity: int = 2000) -> None:
        self.node = node
        self.rate = rate
        self.capacity = capacity
        self.queue: deque[bytes] = deque()
        self.dropped = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.node, name)

    def receive(self, data: bytes, now: float) -> list[object]:
        if len(self.queue) >= self.capacity:
            self.dropped += 1
        else:
            self.queue.append(data)
        return []

    async def serve(self, handle: Any, tick: float = 0.005) -> None:
        """Every ``tick`` seconds, pass ``rate * tick`` queued datagrams to the node."""
        credit = 0.0
        node = self.node
        while True:
            await trio.sleep(tick)
            credit = min(credit + self.rate * tick, self.rate * tick + 1)
            while credit >= 1 and self.queue:
                credit -= 1
                data = self.queue.popleft()
                await handle.command(lambda _ep, now, d=data: node.receive(d, now))


async def slow_member_goodput(n: int, rate: float, window: int) -> dict[str, Any]:
    """N multicasts from one sender to 3 receivers, one of them :class:`Slow` at ``rate``
    datagrams/s, with no app-level window: the sender's ``await multicast`` alone paces
    it. ``window``: ``MulticastConfig.send_window`` (0: no flow control), with
    ``max_buffer`` 1,000 either way. Goodput = N / seconds from the first send to the
    last delivery at the last receiver (or to the give-up time, 3 N / rate + 5 s);
    ``lost``: messages some receiver never delivered; ``removals``: views of fewer than
    all 4 nodes a receiver installed after the start."""
    receivers = 3
    udp = UdpConfig(ttl=0, group_port_base=free_port())
    mc = MulticastConfig(send_window=window, max_buffer=1000)
    cfgs = [NodeConfig(port=free_port(), broker_capable=True, rank=1, multicast=mc)]
    cfgs += [NodeConfig(port=free_port(), multicast=mc) for _ in range(receivers)]
    tally = _Tally(receivers, n, cfgs[0].node_id, cfgs[0].cluster, trio.Event())
    got = tally.got
    shrunk = [0]
    started = [False]

    def take(i: int, note: object) -> None:
        tally.take(i, note)
        if started[0] and type(note).__name__ == "ViewChanged":
            view = note.view  # type: ignore[attr-defined]
            if view.group == tally.cluster and len(view.members) < receivers + 1:
                shrunk[0] += 1

    async with trio.open_nursery() as nursery:
        handles = []
        for k, cfg in enumerate(cfgs):
            ep: Any = Node(cfg, incarnation=1, rng=random.Random(k))
            if k == 1:
                ep = Slow(ep, rate)
            on_event = functools.partial(take, k - 1) if k > 0 else _ignore
            handles.append(await nursery.start(_serve, ep, udp, on_event))
            if isinstance(ep, Slow):
                nursery.start_soon(ep.serve, handles[-1])
        sender = handles[0]
        with trio.fail_after(30):
            while min(tally.views) < receivers + 1:
                tally.progress = trio.Event()
                await tally.progress.wait()
        started[0] = True
        t0 = time.perf_counter()
        give_up = 3 * n / rate + 5
        with trio.move_on_after(give_up):
            for i in range(n):
                await sender.multicast(payload(i))
            while min(len(g) for g in got) < n:
                tally.progress = trio.Event()
                await tally.progress.wait()
        done = min(len(g) for g in got) == n
        seconds = (tally.t_end if done else time.perf_counter()) - t0
        for g in got:  # whatever was delivered: once, in order, the right payloads
            seqs = [q for q, _ in g]
            assert seqs == sorted(set(seqs)), "out of order or twice"
            assert all(p == payload(q - 1) for q, p in g), "wrong payload"
        stats = sender.endpoint.stack(cfgs[0].cluster).multicast.stats
        out = {
            "msgs_per_s": n / seconds,
            "seconds": seconds,
            "slow_rate": rate,
            "ratio_to_slow_rate": n / seconds / rate,
            "lost": sum(n - len(g) for g in got),
            "skipped": sum(
                h.endpoint.stack(cfgs[0].cluster).multicast.stats.skipped for h in handles[1:]
            ),
            "removals": shrunk[0],
            "window_full": stats.window_full,
            "buffer_overflow": stats.buffer_overflow,
            "slow_dropped": handles[1].endpoint.dropped,
        }
        nursery.cancel_scope.cancel()
    return out


def _repair_stats(sender: Any, rx: list[Any], group: int) -> dict[str, int]:
    """The multicast machines' repair counters: receivers' Naks, the sender's Xmits."""

    def stats(h: Any) -> Any:
        ep = h.endpoint
        return getattr(ep, "node", ep).stack(group).multicast.stats

    out = {"naks_sent": 0, "naks_group": 0, "duplicates": 0, "status_sent": 0}
    for h in rx:
        st = stats(h)
        for key in out:
            out[key] += getattr(st, key)
    sst = stats(sender)
    out["xmits_sent"] = sst.xmits_sent
    out["xmits_rate_limited"] = sst.xmits_rate_limited
    out["stable_sent"] = sst.stable_sent
    return out


BENCH_RING = Keyring(primary=1, keys={1: bytes(range(32))})
"""The key of the signed and encrypted goodput runs (loopback only)."""


def _ignore(note: object) -> None:
    pass


def _unkeyed(ep: Any) -> bool:
    """True for a node without a keyring: the bench runs it with ``insecure=True``."""
    return getattr(getattr(ep, "config", None), "keyring", None) is None


async def _serve(
    ep: Any,
    udp: UdpConfig,
    on_event: Callable[[object], None] | None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    async with run_node(ep, udp=udp, on_event=on_event, insecure=_unkeyed(ep)) as handle:
        task_status.started(handle)
        await trio.sleep_forever()


# ------------------------------------------------------------------ raw


def _raw_sockets(receivers: int) -> tuple[socket.socket, list[socket.socket], tuple[str, int]]:
    group = ("239.255.0.1", free_port())
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setblocking(False)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(HOST))
    tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
    tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    tx.bind((HOST, 0))
    rxs = []
    for _ in range(receivers):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(group)
        mreq = socket.inet_aton(group[0]) + socket.inet_aton(HOST)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        rxs.append(s)
    return tx, rxs, group


async def raw_rate(receivers: int, n: int, size: int = PAYLOAD) -> dict[str, Any]:
    """N raw datagrams of ``size`` bytes to the group, windowed like the powergrid run;
    datagrams/s and bytes/s."""
    tx, rxs, group = _raw_sockets(receivers)
    counts = [0] * receivers
    in_order = [True] * receivers
    progress = trio.Event()

    async def read(i: int) -> None:
        nonlocal progress
        sock = rxs[i]
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(BATCH):
                try:
                    data, _src = sock.recvfrom(2048)
                except BlockingIOError:
                    break
                if data != payload(counts[i], size):
                    in_order[i] = False
                counts[i] += 1
            else:  # a full batch: let the others run (as the transport's readers do)
                progress.set()
                await trio.lowlevel.checkpoint()
                continue
            progress.set()

    try:
        async with trio.open_nursery() as nursery:
            for i in range(receivers):
                nursery.start_soon(read, i)
            t0 = time.perf_counter()
            c0 = time.process_time()
            with trio.move_on_after(60):
                for i in range(n):
                    while i - min(counts) >= WINDOW:
                        progress = trio.Event()
                        with trio.move_on_after(0.5):  # a lost datagram must not stall
                            await progress.wait()
                        if i - min(counts) >= WINDOW and not progress.is_set():
                            break
                    while True:
                        try:
                            tx.sendto(payload(i, size), group)
                            break
                        except BlockingIOError:
                            await trio.lowlevel.wait_writable(tx)
                    await trio.lowlevel.checkpoint()
                while min(counts) < n:
                    progress = trio.Event()
                    with trio.move_on_after(0.5):
                        await progress.wait()
                    if not progress.is_set():
                        break
            seconds = time.perf_counter() - t0
            cpu = time.process_time() - c0
            nursery.cancel_scope.cancel()
    finally:
        for s in [tx, *rxs]:
            s.close()
    return {
        "msgs_per_s": min(counts) / seconds,
        "bytes_per_s": min(counts) * size / seconds,
        "cpu_s": cpu,
        "received": min(counts),
        "in_order": all(in_order),
    }


# ------------------------------------------------------------------ asyncio


async def asyncio_goodput(receivers: int, n: int) -> dict[str, Any]:
    """:func:`powergrid_goodput` (no loss, inline notifications) on the asyncio transport."""
    udp = UdpConfig(ttl=0, group_port_base=free_port())
    cfgs = [NodeConfig(port=free_port(), broker_capable=True, rank=1)]
    cfgs += [NodeConfig(port=free_port()) for _ in range(receivers)]
    tally = _Tally(receivers, n, cfgs[0].node_id, cfgs[0].cluster, asyncio.Event())
    got, counts, views, take = tally.got, tally.counts, tally.views, tally.take

    async with contextlib.AsyncExitStack() as stack:
        handles = []
        for k, cfg in enumerate(cfgs):
            ep = Node(cfg, incarnation=1, rng=random.Random(k))
            on_event = functools.partial(take, k - 1) if k > 0 else _ignore
            handles.append(
                await stack.enter_async_context(
                    run_node_asyncio(ep, udp=udp, on_event=on_event, insecure=_unkeyed(ep))
                )
            )
        sender = handles[0]
        async with asyncio.timeout(30):
            while min(views) < receivers + 1:
                tally.progress.clear()
                await tally.progress.wait()
        t0 = time.perf_counter()
        c0 = time.process_time()
        async with asyncio.timeout(120):
            for i in range(n):
                while i - min(counts) >= WINDOW:
                    tally.progress.clear()
                    await tally.progress.wait()
                await sender.multicast(payload(i))
            while min(counts) < n:
                tally.progress.clear()
                await tally.progress.wait()
        seconds = tally.t_end - t0
        cpu = time.process_time() - c0
        check_delivered(got, n)
        st = sender.stats
        sent = {"udp_datagrams": st.sent, "bundles": st.bundles_sent, "bundled": st.bundled}
        repair = _repair_stats(sender, handles[1:], cfgs[0].cluster)
    return {
        "msgs_per_s": n / seconds,
        "seconds": seconds,
        "cpu_s": cpu,
        "sender_udp": sent,
        "repair": repair,
    }


async def raw_rate_asyncio(receivers: int, n: int) -> dict[str, Any]:
    """:func:`raw_rate` on asyncio: ``add_reader`` callbacks reading up to 64 datagrams,
    the sender ``sendto`` + ``asyncio.sleep(0)`` per datagram, the same window."""
    loop = asyncio.get_running_loop()
    tx, rxs, group = _raw_sockets(receivers)
    counts = [0] * receivers
    in_order = [True] * receivers
    progress = asyncio.Event()

    def read(i: int) -> None:
        sock = rxs[i]
        for _ in range(BATCH):
            try:
                data, _src = sock.recvfrom(2048)
            except BlockingIOError:
                break
            if data != payload(counts[i]):
                in_order[i] = False
            counts[i] += 1
        progress.set()

    async def wait_progress() -> bool:
        progress.clear()
        try:
            async with asyncio.timeout(0.5):  # a lost datagram must not stall
                await progress.wait()
        except TimeoutError:
            return False
        return True

    for i in range(receivers):
        loop.add_reader(rxs[i], read, i)
    try:
        t0 = time.perf_counter()
        c0 = time.process_time()
        stalled = False
        for i in range(n):
            while i - min(counts) >= WINDOW and not stalled:
                stalled = not await wait_progress()
            if stalled:
                break
            while True:
                try:
                    tx.sendto(payload(i), group)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.0001)
            await asyncio.sleep(0)
        while min(counts) < n and not stalled:
            stalled = not await wait_progress()
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0
    finally:
        for s in rxs:
            loop.remove_reader(s)
        for s in [tx, *rxs]:
            s.close()
    return {
        "msgs_per_s": min(counts) / seconds,
        "cpu_s": cpu,
        "received": min(counts),
        "in_order": all(in_order),
    }


async def goodput_asyncio(n: int, pairs: int) -> dict[str, Any]:
    """The lossless bundled goodput runs on asyncio, each against raw asyncio UDP.

    ``pairs`` times a raw run and a powergrid run back to back (interleaved: raw,
    powergrid, raw, powergrid ...), so each pair shares the machine's load of its
    moment; the ratio is the median of the pairs' ratios, each side's rate and CPU
    the median of its runs (``runs``: every pair's figures).
    """
    out: dict[str, Any] = {}
    for r in (1, 3):
        raws: list[dict[str, Any]] = []
        pgs: list[dict[str, Any]] = []
        for _ in range(pairs):
            raws.append(await raw_rate_asyncio(r, n))
            pgs.append(await asyncio_goodput(r, n))
        out[f"raw_{r}_asyncio"] = _median_run(raws)
        out[f"powergrid_{r}_asyncio"] = {**_median_run(pgs), "sender_udp": pgs[-1]["sender_udp"]}
        out[f"pairs_{r}_asyncio"] = [
            {
                "raw_msgs_per_s": a["msgs_per_s"],
                "powergrid_msgs_per_s": b["msgs_per_s"],
                "ratio": b["msgs_per_s"] / a["msgs_per_s"],
                "cpu_ratio": a["cpu_s"] / b["cpu_s"],
            }
            for a, b in zip(raws, pgs, strict=True)
        ]
    return out


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "msgs_per_s": statistics.median(r["msgs_per_s"] for r in runs),
        "cpu_s": statistics.median(r["cpu_s"] for r in runs),
    }


def _pair_median(g: dict[str, Any], r: int, key: str) -> float:
    """The median over the interleaved pairs of ``key`` (``ratio`` or ``cpu_ratio``)."""
    return float(statistics.median(p[key] for p in g[f"pairs_{r}_asyncio"]))


# ------------------------------------------------------------------ failover


def start(p: NodeProcesses, port: int, *opts: str) -> str:
    """Run ``powergrid node --json --port PORT *opts`` named ``"127.0.0.1:PORT"``."""
    return p.start(f"{HOST}:{port}", "--insecure", "--port", str(port), *opts)


def failover_once(seed: int) -> dict[str, float]:
    """Seconds from SIGKILL of the lead broker to a new-epoch price at every survivor.

    Also the phases, each the time (after the kill) when the last survivor, or
    the new broker, printed: ``cluster_leader`` (every survivor follows the
    rank-1 node in the cluster: detection and cluster election),
    ``broker_group_lead`` (the new broker leads the broker group: its join
    there and the election of the lead broker) and ``price`` (= ``total``).
    """
    with NodeProcesses() as p:
        common = ["--ttl", "0", "--group-port-base", str(free_port())]
        bid = ["--maximum", "300", "--required", "100"]
        top = start(
            p, free_port(), *common, "--broker-capable", "--rank", "2", "--supply", "1000",
            *bid, "--seed", str(seed),
        )  # fmt: skip
        rest = [
            start(
                p, free_port(), *common, "--broker-capable", "--rank", "1", "--supply", "1000",
                *bid, "--seed", str(seed + 1),
            ),
            start(p, free_port(), *common, *bid, "--seed", str(seed + 2)),
            start(p, free_port(), *common, *bid, "--seed", str(seed + 3)),
        ]  # fmt: skip
        new = rest[0]

        def lead(n: str) -> str | None:
            got = p.events(n, "leader", group=1)
            return got[-1]["leader"] if got else None

        p.until(
            lambda: all(lead(n) == top and p.events(n, "price") for n in [top, *rest]),
            30,
            "the cluster to form under the rank-2 node",
        )
        old = p.events(top, "leader", group=1)[-1]["epoch"]
        t0 = time.monotonic()
        p.kill(top)

        def first(n: str, event: str, **match: object) -> float | None:
            for t, e in p.timed_events(n, event, **match):
                if t >= t0 and (event != "price" or priced(e)):
                    return t - t0
            return None

        def priced(e: dict[str, Any]) -> bool:
            """A price of the new epoch from the lead broker that counted this server's
            bid: not a local re-clear, nor the new broker's republished first price
            (which counts no bid; the server keeps its cap on its lease meanwhile)."""
            return bool(e["epoch"] > old and not e["local"] and e.get("counted", True))

        def republished(n: str) -> float | None:
            for t, e in p.timed_events(n, "price"):
                if t >= t0 and e["epoch"] > old and not e.get("counted", True):
                    return t - t0
            return None

        p.until(lambda: all(first(n, "price") is not None for n in rest), 30, "new prices")
        total = max(first(n, "price") or 0.0 for n in rest)
        carried = [republished(n) for n in rest]
        return {
            "republished": max((c for c in carried if c is not None), default=math.nan),
            "cluster_leader": max(first(n, "leader", group=1, leader=new) or 0.0 for n in rest),
            "broker_group_lead": first(new, "leader", group=0, leader=new) or math.nan,
            "price": total,
            "total": total,
        }


# ------------------------------------------------------------------ main


async def goodput(n: int, *, variants: bool, pairs: int = 1) -> dict[str, Any]:
    """The goodput runs; ``variants`` adds the events() runs and the nak_interval one.

    The lossless bundled runs are ``pairs`` interleaved pairs (raw, powergrid, raw,
    powergrid ...), like the asyncio ones: ``raw_R`` and ``powergrid_R`` are the pair
    whose ratio is the median (``pairs`` odd), ``pairs_R`` every pair's figures. One run
    alone moved between 0.68 and 1.14 on the idle machine (docs/performance.md).
    """
    out: dict[str, Any] = {}
    for r in (1, 3):
        runs = [(await raw_rate(r, n), await powergrid_goodput(r, n, 0.0)) for _ in range(pairs)]
        middle = sorted(runs, key=lambda ab: ab[1]["msgs_per_s"] / ab[0]["msgs_per_s"])
        out[f"raw_{r}"], out[f"powergrid_{r}"] = middle[len(middle) // 2]
        out[f"pairs_{r}"] = [
            {
                "raw_msgs_per_s": a["msgs_per_s"],
                "powergrid_msgs_per_s": b["msgs_per_s"],
                "ratio": b["msgs_per_s"] / a["msgs_per_s"],
                "cpu_ratio": a["cpu_s"] / b["cpu_s"],
            }
            for a, b in runs
        ]
        out[f"powergrid_{r}_unbundled"] = await powergrid_goodput(r, n, 0.0, bundle_size=0)
        if variants:
            out[f"powergrid_{r}_events"] = await powergrid_goodput(r, n, 0.0, inline=False)
    out["powergrid_3_loss5"] = await powergrid_goodput(3, n, 0.05)
    # the cost of keys: the same 3-receiver run signed (HMAC) and encrypted (AES-GCM)
    out["powergrid_3_signed"] = await powergrid_goodput(3, n, 0.0, seal="signed")
    out["powergrid_3_encrypted"] = await powergrid_goodput(3, n, 0.0, seal="encrypted")
    out.update(await goodput_large(n))
    out["powergrid_3_loss1"] = await powergrid_goodput(3, n, 0.01)
    if variants:
        out["powergrid_3_loss5_unbundled"] = await powergrid_goodput(3, n, 0.05, bundle_size=0)
    # Flow control: one receiver takes a tenth of what the others did without loss.
    slow = out["powergrid_3"]["msgs_per_s"] / 10
    m = max(n // 4, 500)
    out["flow_slow"] = await slow_member_goodput(m, slow, window=256)
    out["noflow_slow"] = await slow_member_goodput(m, slow, window=0)
    if variants:  # the same loss with Naks allowed every 10 ms instead of 50 ms
        fast = MulticastConfig(nak_interval=0.01)
        out["powergrid_3_loss5_nak10ms"] = await powergrid_goodput(3, n, 0.05, multicast=fast)
    return out


async def goodput_large(n: int) -> dict[str, Any]:
    """1 MiB messages (as fragments) to 3 receivers, against raw UDP datagrams of the
    fragments' size carrying the same bytes, in the same run; bytes/s."""
    messages = max(2, n // 2500)  # 8 MiB per receiver (quick: 2)
    datagrams = messages * fragment_count(LARGE)
    return {
        "raw_3_large": await raw_rate(3, datagrams, FRAGMENT_DATA),
        "powergrid_3_1mib": await powergrid_goodput(
            3, messages, 0.0, size=LARGE, window=LARGE_WINDOW
        ),
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    n = 2000 if args.quick else 20000
    runs = 1 if args.quick else 10
    pairs = 1 if args.quick else TRIO_PAIRS
    g = trio.run(functools.partial(goodput, n, variants=not args.quick, pairs=pairs))
    g.update(asyncio.run(goodput_asyncio(n, 1 if args.quick else ASYNCIO_PAIRS)))
    phases = [failover_once(seed=7 * k + 1) for k in range(runs)]
    failovers = [ph["total"] for ph in phases]

    def ratio(pg: str, raw: str) -> float:
        return float(g[pg]["msgs_per_s"] / g[raw]["msgs_per_s"])

    def cpu_ratio(pg: str, raw: str) -> float:
        return float(g[raw]["cpu_s"] / g[pg]["cpu_s"])

    r1 = ratio("powergrid_1", "raw_1")
    r3 = ratio("powergrid_3", "raw_3")
    r5 = ratio("powergrid_3_loss5", "raw_3")
    r1l = ratio("powergrid_3_loss1", "raw_3")
    r1u = ratio("powergrid_1_unbundled", "raw_1")
    r3u = ratio("powergrid_3_unbundled", "raw_3")
    result: dict[str, Any] = {
        "cpu_ratio_1_receiver": cpu_ratio("powergrid_1", "raw_1"),
        "cpu_ratio_3_receivers": cpu_ratio("powergrid_3", "raw_3"),
        "cpu_ratio_1_receiver_unbundled": cpu_ratio("powergrid_1_unbundled", "raw_1"),
        "cpu_ratio_3_receivers_unbundled": cpu_ratio("powergrid_3_unbundled", "raw_3"),
        "messages": n,
        "payload_bytes": PAYLOAD,
        "window": WINDOW,
        "goodput": g,
        "ratio_1_receiver": r1,
        "ratio_3_receivers": r3,
        "ratio_5pct_loss": r5,
        "ratio_1mib_goodput": float(
            g["powergrid_3_1mib"]["bytes_per_s"] / g["raw_3_large"]["bytes_per_s"]
        ),
        "goodput_1mib_bytes_per_s": g["powergrid_3_1mib"]["bytes_per_s"],
        "flow_slow_ratio": g["flow_slow"]["ratio_to_slow_rate"],
        "flow_slow_lost": g["flow_slow"]["lost"],
        "flow_slow_removals": g["flow_slow"]["removals"],
        "noflow_slow_lost": g["noflow_slow"]["lost"],
        "loss_1pct_ratio": r1l,
        "ratio_1_receiver_unbundled": r1u,
        "ratio_3_receivers_unbundled": r3u,
        "ratio_1_receiver_asyncio": _pair_median(g, 1, "ratio"),
        "ratio_3_receivers_asyncio": _pair_median(g, 3, "ratio"),
        "cpu_ratio_1_receiver_asyncio": _pair_median(g, 1, "cpu_ratio"),
        "cpu_ratio_3_receivers_asyncio": _pair_median(g, 3, "cpu_ratio"),
        "asyncio_pairs": len(g["pairs_1_asyncio"]),
        "ratio_signed_vs_unkeyed": ratio("powergrid_3_signed", "powergrid_3"),
        "ratio_encrypted_vs_unkeyed": ratio("powergrid_3_encrypted", "powergrid_3"),
        "ratio_encrypted_vs_signed": ratio("powergrid_3_encrypted", "powergrid_3_signed"),
        "cpu_ratio_signed_vs_unkeyed": cpu_ratio("powergrid_3_signed", "powergrid_3"),
        "cpu_ratio_encrypted_vs_unkeyed": cpu_ratio("powergrid_3_encrypted", "powergrid_3"),
        "failover_s": failovers,
        "failover_median_s": statistics.median(failovers),
        "failover_runs": runs,
        "failover_phases_median_s": {
            key: statistics.median(ph[key] for ph in phases) for key in phases[0]
        },
    }
    notes: list[str] = []
    loss_rows: list[Any] = []
    if not args.quick:
        result.update(
            cpu_ratio_1_receiver_events=cpu_ratio("powergrid_1_events", "raw_1"),
            cpu_ratio_3_receivers_events=cpu_ratio("powergrid_3_events", "raw_3"),
            ratio_1_receiver_events=ratio("powergrid_1_events", "raw_1"),
            ratio_3_receivers_events=ratio("powergrid_3_events", "raw_3"),
            ratio_5pct_loss_nak10ms=ratio("powergrid_3_loss5_nak10ms", "raw_3"),
            ratio_5pct_loss_unbundled=ratio("powergrid_3_loss5_unbundled", "raw_3"),
        )
        notes.append(
            "with events() instead of on_event: ratios "
            f"{result['ratio_1_receiver_events']:.3f} / {result['ratio_3_receivers_events']:.3f}"
            f", CPU ratios {result['cpu_ratio_1_receiver_events']:.3f} / "
            f"{result['cpu_ratio_3_receivers_events']:.3f}"
        )
        for label, case, key in (
            ("  the same unbundled", "powergrid_3_loss5_unbundled", "ratio_5pct_loss_unbundled"),
            (
                "  the same with nak_interval 0.01 s (default 0.05)",
                "powergrid_3_loss5_nak10ms",
                "ratio_5pct_loss_nak10ms",
            ),
        ):
            loss_rows.append(
                (label, g[case]["msgs_per_s"], g["raw_3"]["msgs_per_s"], result[key], "")
            )
    rows = [
        (
            "UDP goodput msgs/s, 1 receiver",
            g["powergrid_1"]["msgs_per_s"],
            g["raw_1"]["msgs_per_s"],
            r1,
            "ratio >= 0.6",
        ),
        (
            "  the same unbundled (bundle_size=0)",
            g["powergrid_1_unbundled"]["msgs_per_s"],
            g["raw_1"]["msgs_per_s"],
            r1u,
            "",
        ),
        (
            "UDP goodput msgs/s, 3 receivers",
            g["powergrid_3"]["msgs_per_s"],
            g["raw_3"]["msgs_per_s"],
            r3,
            "ratio >= 0.6",
        ),
        (
            "  the same unbundled (bundle_size=0)",
            g["powergrid_3_unbundled"]["msgs_per_s"],
            g["raw_3"]["msgs_per_s"],
            r3u,
            "",
        ),
        (
            "UDP goodput msgs/s, 3 receivers, 5% loss",
            g["powergrid_3_loss5"]["msgs_per_s"],
            g["raw_3"]["msgs_per_s"],
            r5,
            "ratio >= 0.5",
        ),
        (
            "UDP goodput msgs/s, 3 receivers, 1% loss",
            g["powergrid_3_loss1"]["msgs_per_s"],
            g["raw_3"]["msgs_per_s"],
            r1l,
            "ratio >= 0.7",
        ),
        *loss_rows,
        (
            "3 receivers signed (HMAC) vs unkeyed, msgs/s",
            g["powergrid_3_signed"]["msgs_per_s"],
            g["powergrid_3"]["msgs_per_s"],
            result["ratio_signed_vs_unkeyed"],
            "",
        ),
        (
            "3 receivers encrypted (AES-GCM) vs unkeyed, msgs/s",
            g["powergrid_3_encrypted"]["msgs_per_s"],
            g["powergrid_3"]["msgs_per_s"],
            result["ratio_encrypted_vs_unkeyed"],
            "",
        ),
        (
            "UDP goodput MB/s, 1 MiB messages, 3 receivers",
            g["powergrid_3_1mib"]["bytes_per_s"] / 1e6,
            g["raw_3_large"]["bytes_per_s"] / 1e6,
            result["ratio_1mib_goodput"],
            "",
        ),
        (
            "flow control: goodput, 1 of 3 receivers at 1/10 speed",
            g["flow_slow"]["msgs_per_s"],
            g["flow_slow"]["slow_rate"],
            g["flow_slow"]["ratio_to_slow_rate"],
            "ratio >= 0.8, 0 lost",
        ),
        (
            "  the same without flow control (send_window 0)",
            g["noflow_slow"]["msgs_per_s"],
            g["noflow_slow"]["slow_rate"],
            g["noflow_slow"]["ratio_to_slow_rate"],
            "",
        ),
        (
            "asyncio: UDP goodput msgs/s, 1 receiver",
            g["powergrid_1_asyncio"]["msgs_per_s"],
            g["raw_1_asyncio"]["msgs_per_s"],
            result["ratio_1_receiver_asyncio"],
            "ratio >= 0.6",
        ),
        (
            "asyncio: UDP goodput msgs/s, 3 receivers",
            g["powergrid_3_asyncio"]["msgs_per_s"],
            g["raw_3_asyncio"]["msgs_per_s"],
            result["ratio_3_receivers_asyncio"],
            "",
        ),
        (f"failover kill -9 -> new price, median of {runs} (s)", result["failover_median_s"],
         None, None, ""),
    ]  # fmt: skip
    notes = [
        f"{n} messages of {PAYLOAD} bytes, window {WINDOW}; baseline: raw trio UDP multicast, "
        "same sockets and window, same run (asyncio rows: raw asyncio UDP, same run, "
        f"median of {result['asyncio_pairs']} interleaved raw/powergrid pairs)",
        "asyncio ratios of each pair, 1 receiver: "
        + ", ".join(f"{p['ratio']:.2f}" for p in g["pairs_1_asyncio"]),
        "asyncio CPU ratio: "
        f"1 receiver {result['cpu_ratio_1_receiver_asyncio']:.3f}, "
        f"3 receivers {result['cpu_ratio_3_receivers_asyncio']:.3f}",
        "CPU ratio (raw CPU s / powergrid CPU s, same messages): "
        f"1 receiver {result['cpu_ratio_1_receiver']:.3f}, "
        f"3 receivers {result['cpu_ratio_3_receivers']:.3f}; unbundled "
        f"{result['cpu_ratio_1_receiver_unbundled']:.3f} / "
        f"{result['cpu_ratio_3_receivers_unbundled']:.3f}",
        f"sender's UDP datagrams (bundled run, 1 receiver): {g['powergrid_1']['sender_udp']}",
        "keys, CPU ratio (unkeyed CPU s / keyed CPU s, same messages): signed "
        f"{result['cpu_ratio_signed_vs_unkeyed']:.3f}, encrypted "
        f"{result['cpu_ratio_encrypted_vs_unkeyed']:.3f}",
        *notes,
        f"repair with 5% loss: {g['powergrid_3_loss5']['repair']}",
        f"1 MiB messages: {g['powergrid_3_1mib']['msgs_per_s']:.2f}/s, window "
        f"{LARGE_WINDOW}; baseline raw datagrams of {FRAGMENT_DATA} bytes (a fragment's "
        f"data), window {WINDOW}; repair {g['powergrid_3_1mib']['repair']}",
        f"repair with 1% loss: {g['powergrid_3_loss1']['repair']}",
        "flow control (send_window 256, max_buffer 1000; ratio: against the slow receiver's "
        f"rate): {g['flow_slow']}",
        f"without flow control: {g['noflow_slow']}",
        f"failover runs (s): {', '.join(f'{f:.2f}' for f in failovers)}",
        "failover phases, median s after the kill: "
        + ", ".join(f"{k} {v:.2f}" for k, v in result["failover_phases_median_s"].items()),
        f"lost at the receivers with 5% loss: {g['powergrid_3_loss5']['dropped']} datagrams",
    ]
    emit(args, result, "UDP on loopback: reliable multicast vs raw, and failover", rows, notes)


if __name__ == "__main__":
    main()
