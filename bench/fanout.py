"""Unicast fan-out against IP multicast on loopback: datagrams per group send, and goodput.

    python bench/fanout.py [--json] [--quick]

One sender streams 100-byte multicasts (``bench/udp.py``'s
``powergrid_goodput``: a window of 256 beyond the slowest receiver, every
delivery checked complete and in order) to groups of 2, 3, 4 and 6 nodes, in
both modes: IP multicast (``UdpConfig()``) and unicast fan-out
(``UdpConfig(fanout_seeds=every node)``). Runs alternate (multicast, fan-out,
multicast, ...), ``REPEATS`` of each per size, all in one trio process on
loopback; medians are reported.

Keys, per group size ``g`` (sender included) and mode ``m`` in
``multicast``/``fanout``:

* ``datagrams_per_send[m][g]``: UDP datagrams the *sender* handed to the kernel
  during the stream, per message, with bundling off (``bundle_size=0``), so
  every protocol datagram counts once (Data, and the sender's Status and
  Stable; acks are the receivers'). A multicast counts once at the sender.
* ``msgs_per_s[m][g]``: goodput with the default bundling, messages delivered
  complete and in order per second (the slowest receiver).
* ``ratio[g]``: fan-out goodput / multicast goodput, same run.
* ``ratio_ipv6[g]``: fan-out goodput on IPv6 loopback (``::1``; loopback carries
  no IPv6 multicast, so fan-out is the IPv6 mode here) / fan-out goodput on
  127.0.0.1, same run (mode ``fanout_ipv6`` in the keys above).
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

import trio
from _common import emit, parse_args
from udp import powergrid_goodput

SIZES = (2, 3, 4, 6)
REPEATS = 3


async def measure(n: int, repeats: int, sizes: tuple[int, ...]) -> dict[str, Any]:
    modes = ("multicast", "fanout", "fanout_ipv6")
    per_send: dict[str, dict[int, list[float]]] = {m: {} for m in modes}
    rate: dict[str, dict[int, list[float]]] = {m: {} for m in modes}
    for g in sizes:
        for _ in range(repeats):
            for mode in modes:  # interleaved: A, B, C, A, B, C ...
                fan = mode != "multicast"
                host = "::1" if mode == "fanout_ipv6" else "127.0.0.1"
                raw = await powergrid_goodput(g - 1, n, 0.0, bundle_size=0, fanout=fan, host=host)
                per = raw["sender_udp"]["udp_datagrams_stream"] / n
                per_send[mode].setdefault(g, []).append(per)
                got = await powergrid_goodput(g - 1, n, 0.0, fanout=fan, host=host)
                rate[mode].setdefault(g, []).append(got["msgs_per_s"])
    med = {
        "datagrams_per_send": {
            m: {g: statistics.median(v) for g, v in d.items()} for m, d in per_send.items()
        },
        "msgs_per_s": {m: {g: statistics.median(v) for g, v in d.items()} for m, d in rate.items()},
        "msgs_per_s_all": rate,
    }
    med["ratio"] = {
        g: med["msgs_per_s"]["fanout"][g] / med["msgs_per_s"]["multicast"][g] for g in sizes
    }
    med["ratio_ipv6"] = {
        g: med["msgs_per_s"]["fanout_ipv6"][g] / med["msgs_per_s"]["fanout"][g] for g in sizes
    }
    med["messages"] = n
    med["repeats"] = repeats
    return med


def main() -> None:
    args = parse_args(__doc__ or "")
    # every node lists every node as a seed, unkeyed: the "seeds only" warning is expected
    logging.getLogger("powergrid.transports").setLevel(logging.ERROR)
    n, repeats, sizes = (200, 1, (2, 3)) if args.quick else (5000, REPEATS, SIZES)
    result = trio.run(measure, n, repeats, sizes)
    rows = []
    for g in sizes:
        rows.append(
            (
                f"group of {g}: sender datagrams per send (multicast / fan-out)",
                round(result["datagrams_per_send"]["fanout"][g], 3),
                round(result["datagrams_per_send"]["multicast"][g], 3),
                None,
                f"fan-out ~ {g - 1}",
            )
        )
        rows.append(
            (
                f"group of {g}: goodput msgs/s (fan-out vs multicast)",
                round(result["msgs_per_s"]["fanout"][g]),
                round(result["msgs_per_s"]["multicast"][g]),
                round(result["ratio"][g], 2),
                "",
            )
        )
        rows.append(
            (
                f"group of {g}: fan-out goodput msgs/s (IPv6 ::1 vs IPv4 127.0.0.1)",
                round(result["msgs_per_s"]["fanout_ipv6"][g]),
                round(result["msgs_per_s"]["fanout"][g]),
                round(result["ratio_ipv6"][g], 2),
                "",
            )
        )
    emit(args, result, "Unicast fan-out vs IP multicast (loopback)", rows)


if __name__ == "__main__":
    main()
