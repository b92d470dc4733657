"""A Prometheus exporter of a running node's counters (the optional ``prometheus`` extra).

Theory of operation
-------------------
A node keeps two sets of counters: the node's own :class:`~powergrid.node.NodeStats`
(datagrams refused as malformed, unauthenticated, replayed, of another realm ...)
and its transport's :class:`~powergrid.transports._core.UdpStats` (datagrams sent
and received, bad bundles, send errors ...). :meth:`Driver.counters` reads both;
the CLI's ``stats`` event prints them, and this module serves the same numbers to
Prometheus.

:class:`StatsCollector` is a ``prometheus_client`` custom collector: it holds no
metric objects and copies nothing while the node runs; each scrape reads the
handle's counters at that moment (on the HTTP server's thread: the counters are
plain ints, read whole under the GIL) and yields one family per counter. Names
are derived from the counters' fields, so a counter added to either class is
exported without a change here:

* ``powergrid_node_<field>_total`` (counter) for every ``NodeStats`` field;
* ``powergrid_udp_<field>_total`` (counter) for every ``UdpStats`` field but
  ``recv_buffer``, which is the gauge ``powergrid_udp_recv_buffer_bytes``;
* ``powergrid_node_info`` (gauge, 1) whose labels name the node, its realm and
  cluster.

Every family has the label ``node`` (``"127.0.0.1:47001"``), so one Prometheus
can scrape many nodes of a host. docs/cli.md lists the names.

:func:`serve_metrics` starts ``prometheus_client``'s HTTP server (a daemon
thread) on a registry of its own holding only this collector, bound to the
address given (default loopback; port 0 picks a free one); the returned
:class:`MetricsServer` says the port and stops the server. ``prometheus_client``
is imported only when this module is, so the library runs without it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs

from powergrid.errors import ConfigError, LocalError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from powergrid.transports._core import Driver

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ImportError:  # pragma: no cover - exercised only without the extra
    _MISSING = True
else:
    _MISSING = False

__all__ = ["MetricsServer", "StatsCollector", "metric_names", "serve_metrics"]

_GAUGES = {"recv_buffer": ("powergrid_udp_recv_buffer_bytes", "bytes")}
"""UdpStats fields that are levels, not counts: their metric name and unit."""

_HELP = {"node": "powergrid NodeStats.{field}", "udp": "powergrid UdpStats.{field}"}


def _require() -> None:
    if _MISSING:
        raise LocalError(
            "the Prometheus exporter needs prometheus_client: pip install 'powergrid[prometheus]'"
        )


def _families(kind: str, cls: type) -> list[tuple[str, str, str, bool]]:
    """``(field, metric name, help, is_counter)`` of each field of a stats class."""
    out = []
    for f in attrs.fields(cls):
        text = _HELP[kind].format(field=f.name) + " (docs/cli.md)"
        gauge = _GAUGES.get(f.name) if kind == "udp" else None
        if gauge is not None:
            out.append((f.name, gauge[0], text, False))
        else:
            out.append((f.name, f"powergrid_{kind}_{f.name}", text, True))
    return out


def metric_names() -> list[str]:
    """Every metric name a scrape shows, as Prometheus shows it (counters end in
    ``_total``), sorted. Needs no ``prometheus_client``."""
    from powergrid.node import NodeStats  # noqa: PLC0415
    from powergrid.transports._core import UdpStats  # noqa: PLC0415

    names = ["powergrid_node_info"]
    for kind, cls in (("node", NodeStats), ("udp", UdpStats)):
        for _, name, _, counter in _families(kind, cls):
            names.append(f"{name}_total" if counter else name)
    return sorted(names)


class StatsCollector:
    """A ``prometheus_client`` collector of one node's counters (see the module docstring).

    Register it on any ``CollectorRegistry`` to export a node from an app's own
    metrics server. Raises :class:`~powergrid.errors.LocalError` if
    ``prometheus_client`` is not installed.
    """

    def __init__(self, handle: Driver) -> None:
        _require()
        from powergrid.node import Node, NodeStats  # noqa: PLC0415
        from powergrid.transports._core import UdpStats  # noqa: PLC0415

        self._handle = handle
        self._node_cls = Node
        self._node = _families("node", NodeStats)
        self._udp = _families("udp", UdpStats)

    def describe(self) -> list[Metric]:
        """Nothing: the registry then calls :meth:`collect` at each scrape only."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The families as of now (called by ``prometheus_client`` at each scrape)."""
        handle = self._handle
        who = handle.address
        counters = handle.counters()
        info = GaugeMetricFamily(
            "powergrid_node_info",
            "1; the labels name the node, its realm and cluster",
            labels=["node", "realm", "cluster"],
        )
        endpoint = handle.endpoint
        if isinstance(endpoint, self._node_cls):
            cfg = endpoint.config
            info.add_metric([who, cfg.realm, str(cfg.cluster)], 1)
        else:
            info.add_metric([who, "", ""], 1)
        yield info
        for key, families in (("node_stats", self._node), ("udp_stats", self._udp)):
            values = counters[key]
            for field, name, text, counter in families:
                if field not in values:  # an endpoint that is not a Node keeps no NodeStats
                    continue
                family: Any
                if counter:
                    family = CounterMetricFamily(name, text, labels=["node"])
                else:
                    family = GaugeMetricFamily(name, text, labels=["node"])
                family.add_metric([who], values[field])
                yield family


@attrs.define(eq=False)
class MetricsServer:
    """A running exporter: :attr:`host` and :attr:`port` (the bound one, if 0 was
    asked); :meth:`close` stops it (idempotent). Also a context manager."""

    host: str
    port: int
    _server: Any = attrs.field(repr=False)
    _thread: threading.Thread = attrs.field(repr=False)

    def close(self) -> None:
        """Stop serving and wait for the server thread (at most 5 s)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5.0)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(handle: Driver, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``handle``'s counters at ``http://host:port/metrics`` until closed.

    ``port`` 0..65535 (0: a free one, read :attr:`MetricsServer.port`); ``host`` the
    address to bind (default loopback: expose it deliberately). Raises
    :class:`~powergrid.errors.ConfigError` for a bad port or an address that cannot be
    bound (taken, not local), :class:`~powergrid.errors.LocalError` without
    ``prometheus_client``.
    """
    _require()
    if type(port) is not int or not 0 <= port <= 65535:
        raise ConfigError(f"metrics port must be a whole number in 0..65535, got {port!r}")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(handle))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
    return MetricsServer(host=host, port=server.server_port, server=server, thread=thread)
