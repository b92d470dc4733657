"""Issue 19: the Prometheus exporter serves the same counters as the CLI's ``stats``,
from the handle of an embedding app (trio and asyncio) and from ``powergrid node
--metrics-port``; its metric names are those docs/cli.md lists."""

from __future__ import annotations

import random
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from powergrid.cli.node import EVENTS
from powergrid.errors import ConfigError
from powergrid.node import NodeConfig
from powergrid.transports.metrics import metric_names, serve_metrics
from powergrid.transports.trio_udp import UdpConfig
from powergrid.types import format_node
from tests.loops import LOOPS

HOST = "127.0.0.1"
DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``http://127.0.0.1:port/metrics``: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.parametrize("loop_name", ["trio", "asyncio"])
def test_the_handle_serves_its_counters_to_prometheus(loop_name: str) -> None:
    """Rule: ``handle.serve_metrics(port)`` serves every counter of ``handle.counters()``
    (the CLI's ``stats``) under the names of ``metric_names()``, labelled with the node,
    as they are at the scrape: a garbage datagram shows as one more ``malformed``."""
    L: Any = LOOPS[loop_name]
    port = free_port()
    udp = UdpConfig(ttl=0, group_port_base=free_port(), group_ports=2)
    cfg = NodeConfig(port=port, cluster=1)

    async def main() -> None:
        async with L.run_node(cfg, udp=udp, rng=random.Random(7), insecure=True) as handle:
            with handle.serve_metrics(0) as server:
                assert server.host == HOST and server.port > 0
                who = format_node(handle.node_id)
                before = scrape(server.port)
                key = ("powergrid_node_malformed_total", (("node", who),))
                assert before[key] == 0
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(b"garbage, not a powergrid datagram", (HOST, port))
                with L.fail_after(5):
                    while handle.counters()["node_stats"]["malformed"] < 1:
                        await L.sleep(0.01)
                after = scrape(server.port)
                counters = handle.counters()
                assert after[key] == 1
                names = {name for name, _ in after}
                assert names == set(metric_names())
                for field, value in counters["node_stats"].items():
                    got = after[(f"powergrid_node_{field}_total", (("node", who),))]
                    assert got <= value  # counters only grow between scrape and read
                udp_stats = counters["udp_stats"]
                assert (
                    after[("powergrid_udp_recv_buffer_bytes", (("node", who),))]
                    == (udp_stats["recv_buffer"])
                )
                assert 1 <= after[("powergrid_udp_received_total", (("node", who),))]
                info = (
                    "powergrid_node_info",
                    (("cluster", "1"), ("node", who), ("realm", "default")),
                )
                assert after[info] == 1
            with pytest.raises(OSError):  # closed: nothing listens any more
                scrape(server.port)

    L.run(main)


def test_serve_metrics_refuses_a_bad_or_taken_port() -> None:
    """Errors: a port outside 0..65535 or one already bound is a ConfigError that says so."""
    L: Any = LOOPS["trio"]
    udp = UdpConfig(ttl=0, group_port_base=free_port(), group_ports=2)

    async def main() -> None:
        async with L.run_node(NodeConfig(port=free_port()), udp=udp, insecure=True) as handle:
            with pytest.raises(ConfigError, match=r"0\.\.65535, got 70000"):
                serve_metrics(handle, 70000)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
                taken.bind((HOST, 0))
                taken.listen()
                port = taken.getsockname()[1]
                with pytest.raises(ConfigError, match=f"cannot serve metrics on {HOST}:{port}"):
                    handle.serve_metrics(port)

    L.run(main)


def test_every_metric_name_is_documented() -> None:
    """Docs: docs/cli.md names every metric a scrape shows, and no other."""
    text = DOC.read_text()
    documented = set(re.findall(r"`(powergrid_[a-z_]+)`", text))
    shown = set(metric_names())
    assert shown <= documented, shown - documented
    assert {n for n in documented if n.endswith(("_total", "_bytes", "_info"))} <= shown


def test_the_cli_serves_metrics_on_the_port_named() -> None:
    """Rule: ``powergrid node --metrics-port P`` serves the counters on 127.0.0.1:P while
    it runs and says where in a ``metrics`` line; a port outside 0..65535 is a one-line
    error before the run."""
    assert "metrics" in EVENTS
    mport = free_port(socket.SOCK_STREAM)
    argv = [sys.executable, "-m", "powergrid", "node", "--insecure", "--json"]
    argv += ["--port", str(free_port()), "--ttl", "0", "--group-port-base", str(free_port())]
    argv += ["--metrics-port", str(mport), "--duration", "8"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        started = proc.stdout.readline()
        assert '"event": "started"' in started, started
        line = proc.stdout.readline()
        assert f'"event": "metrics", "url": "http://{HOST}:{mport}/metrics"' in line, line
        samples = scrape(mport)
        assert any(name == "powergrid_udp_sent_total" for name, _ in samples)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    bad = subprocess.run(
        [*argv[:-4], "--metrics-port", "70000"],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "powergrid node: --metrics-port 70000 is outside 0..65535"
