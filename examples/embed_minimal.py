"""Embed one powergrid node in a trio app: print its events, multicast, leave.

Run: ``python examples/embed_minimal.py [port] [key_file]`` (loopback only; with a
key file, every datagram is signed, see docs/security.md). Start it
twice with different ports to see two nodes form a cluster and exchange a
message; alone, the node elects itself broker and lead broker.
"""

from __future__ import annotations

import random
import sys

import trio

from powergrid import Bid, Keyring, NodeConfig, UdpConfig, format_event, run_node


async def main(port: int, key_file: str | None) -> None:
    config = NodeConfig(
        keyring=Keyring.from_file(key_file) if key_file else None,
        host="127.0.0.1",
        port=port,
        cluster=1,
        broker_capable=True,
        supply=1000,
        bid=Bid(floor=50, required=100, maximum=300),
    )
    udp = UdpConfig(interface="127.0.0.1", ttl=0)  # never leaves this host
    start = trio.current_time()
    async with run_node(config, udp=udp, rng=random.Random(port)) as node:

        async def show() -> None:
            async for note in node.events():  # node ids print as 127.0.0.1:47001
                print(f"{trio.current_time() - start:7.3f} {format_event(note)}", flush=True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(show)
            await trio.sleep(3)  # time to elect a broker
            await node.multicast(f"hello from port {port}".encode())
            await node.set_bid(Bid(floor=50, required=120, maximum=300))  # watts
            await trio.sleep(4)  # the lead broker's first prices
            nursery.cancel_scope.cancel()
    # leaving the block left the groups gracefully and closed the sockets
    print("left", flush=True)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 47001
    trio.run(main, port, sys.argv[2] if len(sys.argv) > 2 else None)
