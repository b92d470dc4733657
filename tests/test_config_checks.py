"""Configs check every field when built: a wrong type, a value out of range or fields
that contradict each other raise ConfigError naming the class and the field."""

from __future__ import annotations

import attrs
import pytest

import powergrid as pg
from powergrid.protocols.election import ElectionConfig
from powergrid.protocols.market import BrokerConfig, ClientConfig, Grid, LeadConfig
from powergrid.protocols.membership import MembershipConfig
from powergrid.protocols.multicast import MulticastConfig
from powergrid.protocols.unicast import UnicastConfig


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"supply": -100}, "NodeConfig.supply: must be a whole number of watts >= 0, got -100"),
        ({"supply": 1.5}, "NodeConfig.supply: must be a whole number of watts >= 0, got 1.5"),
        ({"supply": None}, "NodeConfig.supply: must be a whole number of watts >= 0, got None"),
        ({"supply": True}, "NodeConfig.supply: must be a whole number of watts >= 0, got True"),
        ({"port": "47001"}, "NodeConfig.port: must be a whole number in 1..65535, got '47001'"),
        ({"port": 70000}, "NodeConfig.port: must be a whole number in 1..65535, got 70000"),
        ({"host": 127}, "NodeConfig.host: must be an IP address string, got 127"),
        (
            {"host": "localhost"},
            "NodeConfig.host: must be an IPv4 or IPv6 address such as 127.0.0.1 or ::1, "
            "got 'localhost'",
        ),
        (
            {"cluster": 0},
            "NodeConfig.cluster: must be a whole number in 1..4294967295 "
            "(group 0 is the broker group), got 0",
        ),
        ({"cluster": "1"}, "NodeConfig.cluster: must be a whole number in 1..4294967295"),
        ({"rank": -1}, "NodeConfig.rank: must be a whole number in 0..65535, got -1"),
        ({"rank": 2.0}, "NodeConfig.rank: must be a whole number in 0..65535, got 2.0"),
        ({"broker_capable": 1}, "NodeConfig.broker_capable: must be True or False, got 1"),
        ({"broker_capable": "yes"}, "NodeConfig.broker_capable: must be True or False"),
        ({"bid": (0, 10, 20)}, "NodeConfig.bid: must be None or a Bid, got (0, 10, 20)"),
        ({"keyring": b"k" * 32}, "NodeConfig.keyring: must be None or a Keyring"),
        ({"unicast": {}}, "NodeConfig.unicast: must be a UnicastConfig, got {}"),
        ({"multicast": None}, "NodeConfig.multicast: must be a MulticastConfig, got None"),
        ({"membership": None}, "NodeConfig.membership: must be a MembershipConfig"),
        ({"election": None}, "NodeConfig.election: must be an ElectionConfig"),
        ({"client": None}, "NodeConfig.client: must be a ClientConfig"),
        ({"broker": None}, "NodeConfig.broker: must be a BrokerConfig"),
        ({"lead": None}, "NodeConfig.lead: must be a LeadConfig"),
        (
            {"client": ClientConfig(grid=Grid(points=8))},
            "NodeConfig.client.grid, .broker.grid and .lead.grid: must be the same price grid",
        ),
        (
            {"client": ClientConfig(ack_timeout=6.0)},
            "NodeConfig.client.ack_timeout: must be below broker.bid_timeout (6.0 s)",
        ),
    ],
)
def test_node_config_names_the_field(kwargs: dict[str, object], message: str) -> None:
    """Rule: every NodeConfig field is checked when built; the message names it."""
    with pytest.raises(pg.ConfigError) as info:
        pg.NodeConfig(**{"port": 47001, **kwargs})  # type: ignore[arg-type]
    assert message in str(info.value)


def test_a_valid_node_config_is_kept_as_given() -> None:
    cfg = pg.NodeConfig(
        host="10.0.0.2",
        port=47001,
        cluster=3,
        rank=65535,
        broker_capable=True,
        supply=0,
        bid=pg.Bid(floor=0, required=0, maximum=0),
    )
    assert (cfg.host, cfg.port, cfg.cluster, cfg.rank, cfg.supply) == (
        "10.0.0.2",
        47001,
        3,
        65535,
        0,
    )
    assert cfg.node_id == pg.node_id("10.0.0.2", 47001)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: pg.Bid(floor="1", required=2, maximum=3), "Bid.floor: must be a whole number"),
        (lambda: pg.Bid(floor=0, required=2.5, maximum=3), "Bid.required: must be a whole number"),
        (lambda: pg.Bid(floor=0, required=2, maximum=None), "Bid.maximum: must be a whole number"),
        (lambda: pg.Bid(floor=0, required=0, maximum=0, priority=16), "Bid.priority: must be"),
        (lambda: pg.Bid(floor=5, required=2, maximum=9), "Bid: watts must satisfy"),
        (lambda: pg.UdpConfig(ttl="1"), "UdpConfig.ttl: must be a whole number in 0..255"),
        (lambda: pg.UdpConfig(loopback=0), "UdpConfig.loopback: must be True or False, got 0"),
        (lambda: pg.UdpConfig(max_queue=0), "UdpConfig.max_queue: must be a whole number of"),
        (lambda: pg.UdpConfig(flush_timeout="1"), "UdpConfig.flush_timeout: must be a finite"),
        (lambda: pg.UdpConfig(flush_timeout=-1), "UdpConfig.flush_timeout: must be a finite"),
        (lambda: pg.UdpConfig(interface=None), "UdpConfig.interface: must be an IPv4 address"),
        (lambda: pg.UdpConfig(interface="eth0"), "UdpConfig.interface: 'eth0' is not an IPv4"),
        (lambda: pg.UdpConfig(bundle_size=48), "UdpConfig.bundle_size: 48 must be 0"),
        (
            lambda: pg.UdpConfig(group_map=5),
            "UdpConfig.group_map: must be None or a function, got 5",
        ),
        (lambda: UnicastConfig(window="32"), "UnicastConfig.window: must be a whole number"),
        (lambda: UnicastConfig(rto_initial="0.1"), "UnicastConfig.rto_initial: must be a number"),
        (lambda: MulticastConfig(max_held=1.5), "MulticastConfig.max_held: must be a whole number"),
        (lambda: MembershipConfig(heartbeat_interval=None), "MembershipConfig.heartbeat_interval"),
        (lambda: ElectionConfig(stable_leader="no"), "ElectionConfig.stable_leader: must be True"),
        (lambda: ClientConfig(lease="5"), "ClientConfig.lease: must be a number, got '5'"),
        (lambda: BrokerConfig(grid=None), "BrokerConfig.grid: must be a Grid, got None"),
        (lambda: LeadConfig(band=True), "LeadConfig.band: must be a number, got True"),
    ],
)
def test_other_configs_name_the_field(make: object, message: str) -> None:
    """Rule: the configs an app builds (Bid, UdpConfig, the protocol configs) check their
    fields' types when built, naming class and field; ranges and relations as before."""
    with pytest.raises(pg.ConfigError) as info:
        make()  # type: ignore[operator]
    assert message in str(info.value)


_PROTOCOL_CONFIGS = (
    UnicastConfig,
    MulticastConfig,
    MembershipConfig,
    ElectionConfig,
    ClientConfig,
    BrokerConfig,
    LeadConfig,
    Grid,
    pg.UdpConfig,
)
_BAD = (-1, 0, -0.5, float("nan"), float("inf"), 10**30)


def _numeric_fields(cls: type) -> list[str]:
    return [
        f.name
        for f in attrs.fields(cls)  # type: ignore[arg-type]
        if f.init and type(f.default) in (int, float)
    ]


@pytest.mark.parametrize("cls", _PROTOCOL_CONFIGS, ids=lambda c: c.__name__)
def test_range_errors_name_the_class_and_the_field(cls: type) -> None:
    """Rule: every range check of every config class (a field's own range, or a
    relation to another field) says ``Class.field`` of the field given, and the value:
    ``MembershipConfig.heartbeat_interval is -1; set it above 0 seconds``. Each numeric
    field refuses at least one of -1, 0, -0.5, nan, inf and 10**30."""
    fields = _numeric_fields(cls)
    assert fields, cls
    for name in fields:
        refused = 0
        for bad in _BAD:
            try:
                cls(**{name: bad})
            except pg.ConfigError as exc:
                refused += 1
                text = str(exc)
                assert text.startswith(f"{cls.__name__}."), (name, bad, text)
                assert name in text, (name, bad, text)
                assert repr(bad) in text or str(bad) in text, (name, bad, text)
        assert refused, f"{cls.__name__}.{name} took every one of {_BAD}"


def test_the_issue_example_reads_as_promised() -> None:
    with pytest.raises(pg.ConfigError) as info:
        MembershipConfig(heartbeat_interval=-1)
    assert str(info.value).startswith("MembershipConfig.heartbeat_interval")
    assert "-1" in str(info.value)
    with pytest.raises(pg.ConfigError) as info:
        LeadConfig(drift=-0.5)
    assert str(info.value) == "LeadConfig.drift must be >= 0, got -0.5"
