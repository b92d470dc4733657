"""A node stopped on purpose leaves gracefully; only a failure skips the leave.

Real sockets on loopback (TTL 0, fresh ports). In process: a node cancelled
from outside (``trio.move_on_after``) is recorded by its peer as ``left``; a
node whose block raises is recorded as ``crashed``. Real processes
(``powergrid node --json``): SIGINT, SIGTERM, ``{"cmd": "leave"}`` and
``--duration`` each give the peer a ``removed ... reason: left`` line.
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket

import pytest
import trio

from powergrid.cli.processes import NodeProcesses
from powergrid.node import NodeConfig
from powergrid.protocols.membership import MemberRemoved
from powergrid.transports._core import MemberJoined, MemberLeft
from powergrid.transports.asyncio_udp import run_node as run_node_asyncio
from powergrid.transports.trio_udp import UdpConfig, run_node
from powergrid.types import node_id

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


# ------------------------------------------------------------------ in process


class _Boom(Exception):
    pass


async def _peer_sees_removal(how: str) -> str:
    """Run an observer A and a node B; stop B ``how``; B's removal reason as A sees it.

    ``"cancel"``: B's block (inside ``trio.move_on_after``) sleeps forever and
    the outer scope's deadline ends it; ``"raise"``: B's block raises.
    """
    udp = UdpConfig(ttl=0, group_port_base=free_port(), group_ports=2)
    a_port, b_port = free_port(), free_port()
    b_id = node_id(HOST, b_port)
    removed: list[MemberRemoved] = []
    left: list[MemberLeft] = []
    async with run_node(
        NodeConfig(port=a_port, broker_capable=True, rank=1),
        udp=udp,
        rng=random.Random(1),
        insecure=True,
    ) as a:
        joined = trio.Event()

        async def watch() -> None:
            async for ev in a.events():
                if isinstance(ev, MemberJoined) and ev.node == b_id:
                    joined.set()
                elif isinstance(ev, MemberRemoved) and ev.node == b_id:
                    removed.append(ev)
                elif isinstance(ev, MemberLeft) and ev.node == b_id:
                    left.append(ev)
                    return

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                with trio.move_on_after(60) as outer:
                    try:
                        async with run_node(NodeConfig(port=b_port), udp=udp, insecure=True) as b:
                            await joined.wait()
                            assert b.running
                            if how == "raise":
                                raise _Boom
                            outer.deadline = trio.current_time() + 0.05
                            async with trio.open_nursery():
                                await trio.sleep_forever()
                    except _Boom:
                        pass
                assert outer.cancelled_caught == (how == "cancel")
    assert len(removed) == 1 and len(left) == 1
    assert left[0].reason == removed[0].reason  # MemberLeft says why, after the view
    return str(removed[0].reason)


def test_cancelled_from_outside_leaves() -> None:
    """Rule (issue 19): a node whose block is cancelled from an outer scope
    (``trio.move_on_after``) leaves gracefully: its peer records ``left``."""
    assert trio.run(_peer_sees_removal, "cancel") == "left"


def test_exception_in_the_block_is_a_crash() -> None:
    """Rule: an exception that ends the block skips the leave: the peer records ``crashed``."""
    assert trio.run(_peer_sees_removal, "raise") == "crashed"


# ------------------------------------------------------------------ processes


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "leave", "duration"])
def test_cli_node_stopped_on_purpose_leaves(how: str) -> None:
    """Rule (issue 19): a ``powergrid node`` stopped by SIGINT, SIGTERM, a leave command
    or ``--duration`` leaves gracefully: its peer prints ``removed`` with reason ``left``,
    and the node exits 0 with a ``left`` line."""
    common = ["--ttl", "0", "--group-port-base", str(free_port()), "--insecure"]
    a_port, b_port = free_port(), free_port()
    a, b = f"{HOST}:{a_port}", f"{HOST}:{b_port}"
    with NodeProcesses() as procs:
        procs.start(a, "--port", str(a_port), *common, "--broker-capable", "--rank", "1")
        b_opts = ["--duration", "4"] if how == "duration" else []
        procs.start(b, "--port", str(b_port), *common, *b_opts)

        def b_in_view() -> bool:
            views = procs.events(a, "view", group=1)
            return bool(views) and b in views[-1]["members"]

        procs.until(b_in_view, 15, "b in a's view")
        if how in ("SIGINT", "SIGTERM"):
            procs.procs[b].send_signal(getattr(signal, how))
        elif how == "leave":
            procs.send(b, {"cmd": "leave"})
        procs.until(lambda: procs.events(a, "removed", member=b), 10, "a to remove b")
        assert [e["reason"] for e in procs.events(a, "removed", member=b)] == ["left"]
        assert procs.procs[b].wait(timeout=5) == 0
        procs.pump(0.2)
        assert procs.lines[b][-1]["event"] == "left"


# ------------------------------------------------------------------ asyncio


async def _asyncio_peer_sees_removal(how: str) -> str:
    """:func:`_peer_sees_removal` on the asyncio transport (``asyncio.timeout`` from outside)."""
    udp = UdpConfig(ttl=0, group_port_base=free_port(), group_ports=2)
    a_port, b_port = free_port(), free_port()
    b_id = node_id(HOST, b_port)
    removed: list[MemberRemoved] = []
    left: list[MemberLeft] = []
    joined = asyncio.Event()
    gone = asyncio.Event()
    a_cfg = NodeConfig(port=a_port, broker_capable=True, rank=1)
    async with run_node_asyncio(a_cfg, udp=udp, rng=random.Random(1), insecure=True) as a:

        async def watch() -> None:
            async for ev in a.events():
                if isinstance(ev, MemberJoined) and ev.node == b_id:
                    joined.set()
                elif isinstance(ev, MemberRemoved) and ev.node == b_id:
                    removed.append(ev)
                elif isinstance(ev, MemberLeft) and ev.node == b_id:
                    left.append(ev)
                    gone.set()
                    return

        async with asyncio.timeout(10), asyncio.TaskGroup() as tasks:
            tasks.create_task(watch())
            timed_out = False
            try:
                async with asyncio.timeout(None) as outer:
                    async with run_node_asyncio(
                        NodeConfig(port=b_port), udp=udp, insecure=True
                    ) as b:
                        await joined.wait()
                        assert b.running
                        if how == "raise":
                            raise _Boom
                        outer.reschedule(asyncio.get_running_loop().time() + 0.05)
                        await asyncio.Event().wait()
            except _Boom:
                pass
            except TimeoutError:
                timed_out = True
            assert timed_out == (how == "cancel")
            await gone.wait()
    assert len(removed) == 1 and len(left) == 1
    assert left[0].reason == removed[0].reason
    return str(removed[0].reason)


@pytest.mark.parametrize(("how", "reason"), [("cancel", "left"), ("raise", "crashed")])
def test_asyncio_cancelled_from_outside_leaves_an_exception_crashes(how: str, reason: str) -> None:
    """Rule: on asyncio too, a block cancelled from outside (``asyncio.timeout``) leaves
    gracefully (peer: ``left``) and a block that raises does not (peer: ``crashed``)."""
    assert asyncio.run(_asyncio_peer_sees_removal(how)) == reason
