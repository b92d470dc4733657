"""Embed one powergrid node in a trio app: print its events, multicast, leave.

Run: ``python examples/embed_minimal.py [port]`` (loopback only). Start it
twice with different ports to see two nodes form a cluster and exchange a
message; alone, the node elects itself broker and lead broker. The node is
keyed: the first run makes the realm's key file with ``powergrid keygen`` in
the temp directory, and every run signs and checks with it.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from powergrid.auth import Keyring
from powergrid.cli.node import describe
from powergrid.node import NodeConfig
from powergrid.protocols.market import Bid
from powergrid.transports.trio_udp import UdpConfig, run_node


def key_file() -> Path:
    """The example realm's key file, made once by ``powergrid keygen`` (mode 0600)."""
    path = Path(tempfile.gettempdir()) / "powergrid-example.keys"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "powergrid", "keygen", str(path)], check=True)
    return path


async def main(port: int) -> None:
    config = NodeConfig(
        host="127.0.0.1",
        port=port,
        realm="example",
        keyring=Keyring.from_file(key_file()),
        cluster=1,
        broker_capable=True,
        supply=1000,
        bid=Bid(floor=50, required=100, maximum=300),
    )
    udp = UdpConfig(interface="127.0.0.1", ttl=0)  # never leaves this host
    start = trio.current_time()
    async with run_node(config, udp=udp, rng=random.Random(port)) as node:

        async def show() -> None:
            async for note in node.events():
                desc = describe(note)  # None for notifications not worth a line
                if desc is not None:
                    print(f"{trio.current_time() - start:7.3f} {desc[0]:8} {desc[1]}", flush=True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(show)
            await trio.sleep(3)  # time to elect a broker
            await node.multicast(f"hello from port {port}".encode())
            await trio.sleep(4)  # the lead broker's first prices
            nursery.cancel_scope.cancel()
    # leaving the block left the groups gracefully and closed the sockets
    print("left", flush=True)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 47001)
