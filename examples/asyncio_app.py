"""An asyncio app: join cluster 1 on loopback, greet each member that joins, print what others say.

Run: python examples/asyncio_app.py PORT GROUP_PORT_BASE SECONDS KEY_FILE
(beside examples/trio_app.py; the key file as docs/security.md says).
"""

import asyncio
import contextlib
import sys

import powergrid as pg


async def main(port: int, group_port_base: int, seconds: float, key_file: str) -> None:
    keyring = pg.Keyring.from_file(key_file)  # every datagram signed; unsigned ones refused
    config = pg.NodeConfig(port=port, cluster=1, broker_capable=True, keyring=keyring)
    udp = pg.UdpConfig(ttl=0, group_port_base=group_port_base)
    with contextlib.suppress(TimeoutError):  # a stop on purpose: the node leaves gracefully
        async with asyncio.timeout(seconds), pg.run_node_asyncio(config, udp=udp) as node:
            async for event in node.events():
                if isinstance(event, pg.MemberJoined) and event.group == config.cluster:
                    await node.multicast(f"hello from asyncio {node.address}".encode())
                elif isinstance(event, pg.MessageDelivered) and event.sender != node.node_id:
                    print(pg.format_node(event.sender), event.payload.decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]))
