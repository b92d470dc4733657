"""powergrid.auth: keyring, trailer, tag checks, replay window; the node's keyed paths."""

from __future__ import annotations

import base64
import hmac
import os
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powergrid import cli
from powergrid.auth import (
    MAX_COUNTER,
    MIN_KEY_BYTES,
    REPLAY_WINDOW,
    Authenticator,
    AuthStats,
    Keyring,
    _Mac,
    realm_key,
)
from powergrid.cli.node import build_configs
from powergrid.errors import ConfigError, DecodeError, PayloadTooLargeError, UsageError
from powergrid.events import Transmit, TransmitGroup
from powergrid.node import MessageDelivered, Node, NodeConfig
from powergrid.sim.memory import MemoryNetwork
from powergrid.types import node_id
from powergrid.wire import (
    AUTH_TRAILER_SIZE,
    DEFAULT_REALM_TAG,
    FLAG_AUTH,
    HEADER_SIZE,
    MAX_DATAGRAM,
    WIRE_LIMIT,
    Data,
    Heartbeat,
    decode,
    encode,
)

K1 = bytes(range(16))
K2 = bytes(range(100, 132))
RING = Keyring(primary=1, keys={1: K1})
SENDER = node_id("127.0.0.1", 9001)
HB = encode(1, SENDER, 3, Heartbeat(epoch=2, view_id=5))


def _auth(ring: Keyring = RING, **kw: int) -> Authenticator:
    return Authenticator(ring, **kw)


# ------------------------------------------------------------------ keyring


def test_keyring_validates_ids_lengths_and_primary() -> None:
    """Rule: ids 1..65535, unique; secrets >= 16 bytes; the primary is one of the keys."""
    with pytest.raises(ConfigError, match="at least one key"):
        Keyring(primary=1, keys={})
    with pytest.raises(ConfigError, match=r"key id 0 must be an integer in 1\.\.65535"):
        Keyring(primary=0, keys={0: K1})
    with pytest.raises(ConfigError, match="key 1 is 15 bytes; use at least 16"):
        Keyring(primary=1, keys={1: K1[:15]})
    with pytest.raises(ConfigError, match=r"primary key id 2 is not among the keys \[1\]"):
        Keyring(primary=2, keys={1: K1})
    with pytest.raises(ConfigError, match="given twice"):
        Keyring(primary=1, keys=[(1, K1), (1, K2)])
    with pytest.raises(ConfigError, match="must be bytes"):
        Keyring(primary=1, keys={1: "x" * 16})  # type: ignore[dict-item]
    ring = Keyring(primary=2, keys={2: K2, 1: K1})
    assert ring.key_ids == (1, 2) and ring.keys == ((1, K1), (2, K2))


def test_keyring_repr_never_shows_a_secret() -> None:
    """Rule: the repr (logged with NodeConfig) names key ids only."""
    ring = Keyring(primary=2, keys={2: K2, 1: K1})
    assert repr(ring) == "Keyring(primary=2, key_ids=[1, 2])"
    assert K1.hex() not in repr(NodeConfig(port=9000, keyring=ring))


def test_keyring_text_format_hex_base64_primary_comments() -> None:
    """Rule: 'ID hex:..|base64:.. [primary]' per line or ';', '#' comments; one key is primary."""
    text = f"# keys\n1 hex:{K1.hex()}  # old\n\n2 base64:{_b64(K2)} primary\n"
    assert Keyring.parse(text) == Keyring(primary=2, keys={1: K1, 2: K2})
    assert Keyring.parse(f"7 hex:{K1.hex()}") == Keyring(primary=7, keys={7: K1})
    both = f"1 hex:{K1.hex()} primary; 2 hex:{K2.hex()}"
    assert Keyring.parse(both) == Keyring(primary=1, keys={1: K1, 2: K2})


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "holds no key"),
        ("# nothing", "holds no key"),
        (f"1 {K1.hex()}", "write the secret as hex:DIGITS or base64:TEXT"),
        ("1 hex:zz" + "00" * 16, "not valid hex"),
        ("1 base64:@@@@", "not valid base64"),
        (f"x hex:{K1.hex()}", "key id 'x' is not a number"),
        (f"1 hex:{K1.hex()} secondary", "optionally followed by 'primary'"),
        (f"1 hex:{K1.hex()}; 2 hex:{K2.hex()}", "none is marked 'primary'"),
        (f"1 hex:{K1.hex()} primary; 2 hex:{K2.hex()} primary", r"marks keys \[1, 2\] primary"),
        (f"1 hex:{K1.hex()}; 1 hex:{K2.hex()} primary", "given twice"),
        ("1 hex:" + "00" * 8, "is 8 bytes; use at least 16"),
    ],
)
def test_keyring_text_errors_say_what_to_fix(text: str, words: str) -> None:
    """Rule: every malformed key text raises ConfigError naming the fault."""
    with pytest.raises(ConfigError, match=words):
        Keyring.parse(text)


def test_keyring_from_file_and_env(tmp_path: Path) -> None:
    """Rule: a key file (not world-accessible) or $POWERGRID_KEYS; unset env gives None."""
    path = tmp_path / "keys"
    path.write_text(f"1 hex:{K1.hex()}\n")
    path.chmod(0o600)
    assert Keyring.from_file(path) == RING
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="any user; run chmod 600"):
        Keyring.from_file(path)
    with pytest.raises(ConfigError, match="cannot read key file"):
        Keyring.from_file(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_bytes(b"\xff\xfe")
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match="not UTF-8"):
        Keyring.from_file(bad)
    assert Keyring.from_env({}) is None
    assert Keyring.from_env({"POWERGRID_KEYS": f"1 hex:{K1.hex()}"}) == RING
    with pytest.raises(ConfigError, match=r"\$POWERGRID_KEYS holds no key"):
        Keyring.from_env({"POWERGRID_KEYS": ""})


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


# ------------------------------------------------------------------ trailer


def test_trailer_layout_is_flag_key_id_counter_and_truncated_hmac() -> None:
    """Rule: flags bit 0 set; then key id u16, counter u48, HMAC-SHA256[:16] over all before it."""
    auth = _auth()
    signed = auth.seal(HB)
    assert len(signed) == len(HB) + AUTH_TRAILER_SIZE == len(HB) + 24
    assert signed[4] == FLAG_AUTH
    assert signed[:4] == HB[:4] and signed[5 : len(HB)] == HB[5:]
    stamp = signed[len(HB) : len(HB) + 8]
    assert stamp == struct.pack("!HHI", 1, 0, 1)  # key id 1, counter 1 (u48)
    # the key that signs is the secret bound to the realm (here the default one)
    key = hmac.digest(K1, b"powergrid realm key\0default", "sha256")
    assert realm_key(K1, "default") == key
    assert signed[-16:] == hmac.digest(key, signed[:-16], "sha256")[:16]
    assert auth.seal(HB)[len(HB) : len(HB) + 8] == struct.pack("!HHI", 1, 0, 2)
    assert auth.counter == 2 and auth.stats.sealed == 2


def test_open_strips_the_trailer_and_returns_the_counter() -> None:
    """Rule: a valid datagram opens to the original bytes (flags 0) and its counter."""
    a, b = _auth(), _auth()
    a.seal(HB)
    assert b.open(a.seal(HB)) == (HB, 2)
    assert decode(HB).sender == SENDER


def test_decode_refuses_a_signed_datagram_and_other_flags() -> None:
    """Rule: the decoder never reads a trailer: the auth flag or unknown flags raise DecodeError."""
    with pytest.raises(DecodeError, match="authenticated datagram"):
        decode(_auth().seal(HB))
    other = bytearray(HB)
    other[4] = 0x02
    with pytest.raises(DecodeError, match="unknown flags 0x02"):
        decode(bytes(other))


def test_every_single_bit_flip_is_refused() -> None:
    """Rule: the tag covers header, body, key id and counter: any one flipped bit is refused."""
    signed = _auth().seal(HB)
    b = _auth()
    for i in range(len(signed) * 8):
        bad = bytearray(signed)
        bad[i // 8] ^= 1 << (i % 8)
        assert b.open(bytes(bad)) is None, i
    s = b.stats
    # bit 0 of flags: looks unsigned; the key id bits: unknown key; the rest: bad tag
    assert (s.unsigned, s.unknown_key, s.bad_tag) == (1, 16, len(signed) * 8 - 17)


def test_open_refuses_unsigned_short_oversized_and_unknown_keys() -> None:
    """Rule: no flag, too short for a trailer, over WIRE_LIMIT, or a key id not in the ring."""
    b = _auth()
    assert b.open(HB) is None
    assert b.open(b"") is None
    assert b.open(b"PG\x01\x10\x01" + bytes(30)) is None  # flag set, shorter than header+trailer
    assert b.open(_auth().seal(HB) + bytes(WIRE_LIMIT)) is None
    other = Authenticator(Keyring(primary=9, keys={9: K2}))
    assert b.open(other.seal(HB)) is None
    assert (b.stats.unsigned, b.stats.unknown_key, b.stats.bad_tag) == (4, 1, 0)


def test_same_id_other_secret_is_a_bad_tag() -> None:
    """Rule: a datagram signed with another secret under an accepted id fails the tag."""
    forger = Authenticator(Keyring(primary=1, keys={1: K2}))
    b = _auth()
    assert b.open(forger.seal(HB)) is None and b.stats.bad_tag == 1


def test_rotation_accepts_every_key_in_the_ring_and_signs_with_the_primary() -> None:
    """Rule: old primary 1 and new primary 2 interoperate while both are in the rings."""
    old = Authenticator(Keyring(primary=1, keys={1: K1, 2: K2}))
    new = Authenticator(Keyring(primary=2, keys={1: K1, 2: K2}))
    only_new = Authenticator(Keyring(primary=2, keys={2: K2}))
    assert new.open(old.seal(HB)) is not None
    assert old.open(new.seal(HB)) is not None
    signed_new = new.seal(HB)
    assert signed_new[len(HB) : len(HB) + 2] == b"\x00\x02"
    assert only_new.open(signed_new) is not None
    assert only_new.open(old.seal(HB)) is None and only_new.stats.unknown_key == 1


def test_biggest_datagram_signed_is_exactly_the_wire_limit() -> None:
    """Rule: encode keeps room for the trailer: a full datagram signed is WIRE_LIMIT bytes."""
    room = MAX_DATAGRAM - HEADER_SIZE - struct.calcsize("!QB")
    full = encode(1, SENDER, 1, Data(seq=1, kind=0, payload=b"x" * room))
    assert len(full) == MAX_DATAGRAM == WIRE_LIMIT - AUTH_TRAILER_SIZE == 1376
    assert len(_auth().seal(full)) == WIRE_LIMIT == 1400
    with pytest.raises(PayloadTooLargeError, match="24-byte authentication trailer"):
        encode(1, SENDER, 1, Data(seq=1, kind=0, payload=b"x" * (room + 1)))


def test_counter_exhaustion_raises_usage_error() -> None:
    """Rule: after 2**48-1 datagrams in one incarnation, sealing raises UsageError."""
    auth = _auth()
    auth._counter = MAX_COUNTER - 1
    auth.seal(HB)
    with pytest.raises(UsageError, match="restart with a higher incarnation"):
        auth.seal(HB)


@settings(max_examples=200)
@given(st.binary(min_size=16, max_size=200), st.binary(max_size=WIRE_LIMIT))
def test_precomputed_hmac_equals_the_standard_library(key: bytes, msg: bytes) -> None:
    """Rule: the tag is HMAC-SHA256 (RFC 2104) for any key length, truncated to 16 bytes."""
    assert _Mac(key).tag(msg) == hmac.digest(key, msg, "sha256")[:16]


# ------------------------------------------------------------ replay window


def test_window_accepts_each_counter_once() -> None:
    """Rule: a counter seen before is refused (duplicate); a new one is accepted."""
    w = _auth()
    assert w.accept(SENDER, 1, 1)
    assert not w.accept(SENDER, 1, 1)
    assert w.accept(SENDER, 1, 2)
    assert not w.accept(SENDER, 1, 1)
    assert w.stats.duplicate == 2


def test_window_accepts_reordering_within_the_window_and_refuses_older() -> None:
    """Rule: counters up to REPLAY_WINDOW-1 below the highest are accepted once; older refused."""
    w = _auth()
    top = 5000
    assert w.accept(SENDER, 1, top)
    assert w.accept(SENDER, 1, top - (REPLAY_WINDOW - 1))
    assert not w.accept(SENDER, 1, top - (REPLAY_WINDOW - 1))
    assert not w.accept(SENDER, 1, top - REPLAY_WINDOW)
    assert w.accept(SENDER, 1, top - 1)
    assert (w.stats.duplicate, w.stats.too_old) == (1, 1)


def test_window_slides_and_forgets_bits_beyond_it() -> None:
    """Rule: a jump ahead by the window or more clears the memory of older counters."""
    w = _auth()
    for c in range(1, 11):
        assert w.accept(SENDER, 1, c)
    assert w.accept(SENDER, 1, 10 + REPLAY_WINDOW)  # 1..10 now out of the window
    assert not w.accept(SENDER, 1, 10)
    assert w.accept(SENDER, 1, 11)  # inside the window, never seen
    assert w.stats.too_old == 1


def test_higher_incarnation_resets_the_window_lower_is_refused() -> None:
    """Rule: a restarted sender (higher incarnation) starts again at 1; its old life is refused."""
    w = _auth()
    assert w.accept(SENDER, 3, 500)
    assert w.accept(SENDER, 4, 1)
    assert not w.accept(SENDER, 3, 501)
    assert not w.accept(SENDER, 4, 1)
    assert w.stats == AuthStats(old_incarnation=1, duplicate=1)


def test_windows_are_per_sender_and_bounded() -> None:
    """Rule: each sender has its own window; beyond max_senders new senders are refused."""
    w = _auth(max_senders=2)
    assert w.accept(1, 1, 1) and w.accept(2, 1, 1)
    assert not w.accept(3, 1, 1)
    assert w.accept(1, 1, 2)
    assert w.senders == 2 and w.stats.senders_full == 1
    with pytest.raises(ConfigError, match="max_senders 0"):
        _auth(max_senders=0)


@settings(max_examples=300)
@given(st.lists(st.integers(1, 3000), max_size=300))
def test_window_matches_a_model(counters: list[int]) -> None:
    """Property: accepted iff never seen and within REPLAY_WINDOW of the highest seen so far."""
    w = _auth()
    seen: set[int] = set()
    highest = 0
    for c in counters:
        fresh = c not in seen and c > highest - REPLAY_WINDOW
        assert w.accept(SENDER, 1, c) == fresh
        if fresh:
            seen.add(c)
            highest = max(highest, c)


# ------------------------------------------------------------------ the node


def _keyed_node(port: int, ring: Keyring | None = RING) -> Node:
    return Node(NodeConfig(port=port, keyring=ring), incarnation=1, rng=random.Random(port))


def test_keyed_node_signs_every_datagram_it_sends() -> None:
    """Rule: with a keyring every Transmit/TransmitGroup carries the flag and a valid tag."""
    node = _keyed_node(9000)
    out = node.start(0.0) + node.handle_deadline(5.0)
    sent = [o.data for o in out if isinstance(o, Transmit | TransmitGroup)]
    assert sent
    check = _auth()
    for data in sent:
        assert data[4] == FLAG_AUTH and check.open(data) is not None


def test_unkeyed_node_sends_flags_zero_exactly_as_before() -> None:
    """Rule: without a keyring the wire format is unchanged: flags 0, no trailer."""
    node = _keyed_node(9000, ring=None)
    out = node.start(0.0)  # a joiner that knows no leader sends nothing yet
    out += node.multicast(b"x", 0.0)
    sent = [o.data for o in out if isinstance(o, TransmitGroup)]
    assert sent and all(d[4] == 0 and decode(d) for d in sent)


def test_keyed_node_counts_unsigned_forged_and_replayed_and_never_raises() -> None:
    """Rule: a keyed node drops unsigned/forged datagrams before decoding (unauthenticated)
    and authentic repeats after (replayed); only fresh authentic ones reach the machines."""
    node = _keyed_node(9000)
    node.start(0.0)
    peer = _auth()
    hb = encode(1, SENDER, 1, Heartbeat(epoch=1, view_id=1))
    assert node.receive(hb, 0.1) == []  # unsigned
    assert node.receive(b"garbage", 0.1) == []
    signed = peer.seal(hb)
    forged = bytearray(signed)
    forged[-1] ^= 0x80
    assert node.receive(bytes(forged), 0.1) == []
    node.receive(signed, 0.1)
    before = node.stats.received
    assert node.receive(signed, 0.2) == []  # the same datagram again
    s = node.stats
    assert (s.unauthenticated, s.replayed, s.malformed) == (3, 1, 0)
    assert s.received == before + 1
    # authentic but undecodable: counted malformed, after the tag
    unknown_type = b"PG\x02\xee" + bytes(HEADER_SIZE - 8) + DEFAULT_REALM_TAG.to_bytes(4, "big")
    assert node.receive(peer.seal(unknown_type), 0.3) == []
    assert node.stats.malformed == 1


def test_unkeyed_node_refuses_signed_datagrams_as_malformed() -> None:
    """Rule: a node without a keyring cannot read signed datagrams: the decoder refuses them."""
    node = _keyed_node(9000, ring=None)
    node.start(0.0)
    assert (
        node.receive(_auth().seal(encode(1, SENDER, 1, Heartbeat(epoch=1, view_id=1))), 0.1) == []
    )
    assert node.stats.malformed == 1


def test_keyed_cluster_elects_and_delivers_like_an_unkeyed_one() -> None:
    """Rule: authentication is transparent: same leader, view and deliveries with a key."""
    results = []
    for ring in (None, Keyring(primary=1, keys={1: os.urandom(MIN_KEY_BYTES)})):
        net = MemoryNetwork(seed=1)
        nodes = [
            Node(
                NodeConfig(port=9000 + i, broker_capable=True, keyring=ring),
                incarnation=1,
                rng=random.Random(i),
            )
            for i in range(4)
        ]
        for n in nodes:
            net.add(n, at=0.0)
        net.run_until(5.0)
        net.command(nodes[0].node_id, lambda ep, now: ep.multicast(b"hello", now))
        net.run_until(6.0)
        got = [(t, nid, o) for t, nid, o in net.log or [] if isinstance(o, MessageDelivered)]
        leaders = {n.stack(1).membership.leader for n in nodes}
        results.append((leaders, len(got), [n.stats.unauthenticated for n in nodes]))
    assert results[0] == results[1]
    assert results[1][0] == {node_id("127.0.0.1", 9003)} and results[1][1] == 4  # the sender too


# ------------------------------------------------------------------ the CLI


def _cli_args(*argv: str) -> Any:
    return cli.build_parser("node").parse_args(["node", "--port", "9100", *argv])


def test_cli_key_file_or_environment_never_a_key_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rule: powergrid node takes keys from --key-file or $POWERGRID_KEYS (not both), and has
    no option that takes a key itself."""
    path = tmp_path / "keys"
    path.write_text(f"1 hex:{K1.hex()}\n")
    path.chmod(0o600)
    node, _ = build_configs(_cli_args("--key-file", str(path)), environ={})
    assert node.keyring == RING
    node, _ = build_configs(_cli_args(), environ={"POWERGRID_KEYS": f"1 hex:{K1.hex()}"})
    assert node.keyring == RING
    node, _ = build_configs(_cli_args("--insecure"), environ={})
    assert node.keyring is None
    with pytest.raises(ConfigError, match="not both"):
        build_configs(_cli_args("--key-file", str(path)), environ={"POWERGRID_KEYS": "x"})
    with pytest.raises(SystemExit):
        _cli_args("--key", K1.hex())  # refused, not taken for --key-file
    err = capsys.readouterr().err
    assert "never given on the command line" in err and K1.hex() not in err
