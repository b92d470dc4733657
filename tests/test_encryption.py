"""Payload encryption (issue 21): AES-256-GCM keyed from the cluster key with HKDF,
a counter nonce per sender's life, the realm and the header bound as associated data."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("cryptography")

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from powergrid.auth import Authenticator, Keyring, realm_key
from powergrid.errors import ConfigError
from powergrid.node import MessageDelivered, Node, NodeConfig
from powergrid.sim.memory import MemoryNetwork
from powergrid.types import node_id
from powergrid.wire import (
    AUTH_TRAILER_SIZE,
    FLAG_AUTH,
    FLAG_SECRET,
    HEADER_SIZE,
    MAX_DATAGRAM,
    WIRE_LIMIT,
    Data,
    decode,
    encode,
)

K1 = bytes(range(32))
RING = Keyring(primary=1, keys={1: K1})
SENDER = node_id("127.0.0.1", 9001)
SECRET = b"the price is 41.5 per kW; broker 10.0.0.7"
DATA = encode(1, SENDER, 3, Data(seq=1, kind=0, payload=SECRET))


def _enc(ring: Keyring = RING, realm: str = "default") -> Authenticator:
    return Authenticator(ring, realm=realm, encrypt=True)


def test_the_body_is_encrypted_and_the_layout_is_the_signed_one() -> None:
    """Rule: the payload does not appear on the wire; the header stays readable with
    flags AUTH|SECRET; the trailer is key id, counter and the 16-byte GCM tag, so an
    encrypted datagram is exactly as long as a signed one (sizes unchanged)."""
    sealed = _enc().seal(DATA)
    signed = Authenticator(RING).seal(DATA)
    assert SECRET not in sealed and SECRET in signed
    assert len(sealed) == len(signed) == len(DATA) + AUTH_TRAILER_SIZE
    assert sealed[4] == FLAG_AUTH | FLAG_SECRET
    assert sealed[:4] == DATA[:4] and sealed[5:HEADER_SIZE] == DATA[5:HEADER_SIZE]
    assert sealed[-24:-16] == (1 << 48 | 1).to_bytes(8, "big")  # key id 1, counter 1
    opened = _enc().open(sealed)
    assert opened == (DATA, 1)
    assert decode(opened[0]).message.payload == SECRET  # type: ignore[attr-defined]


def test_the_cipher_is_aes_gcm_under_an_hkdf_key_of_the_senders_life() -> None:
    """Rule (docs/security.md, Encryption): key = HKDF-SHA256(realm key, info =
    "powergrid aes-gcm\\0" + sender u64 + incarnation u32), nonce = 6 zero bytes +
    counter u48, associated data = "powergrid realm\\0" + realm + "\\0" + header +
    stamp. Decrypting with the primitives by hand gives the body back."""
    sealed = _enc(realm="dc-7").seal(DATA)
    life = sealed[9:21]
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"powergrid aes-gcm\0" + life
    ).derive(realm_key(K1, "dc-7"))
    stamp = sealed[-24:-16]
    body = AESGCM(key).decrypt(
        bytes(6) + stamp[2:],
        sealed[HEADER_SIZE:-24] + sealed[-16:],
        b"powergrid realm\0dc-7\0" + sealed[:HEADER_SIZE] + stamp,
    )
    assert body == DATA[HEADER_SIZE:]


def test_nonces_never_repeat_within_a_life_and_lives_get_their_own_keys() -> None:
    """Rule: each datagram sealed takes the next counter as its nonce, so the same
    datagram sealed twice gives different ciphertexts; another sender, or the same
    sender in a new incarnation, encrypts the same body under another key."""
    a = _enc()
    one, two = a.seal(DATA), a.seal(DATA)
    assert one[HEADER_SIZE:-24] != two[HEADER_SIZE:-24]
    assert one[-22:-16] == (1).to_bytes(6, "big") and two[-22:-16] == (2).to_bytes(6, "big")
    other = encode(1, node_id("127.0.0.1", 9002), 3, decode(DATA).message)
    reborn = encode(1, SENDER, 4, decode(DATA).message)
    bodies = {_enc().seal(d)[HEADER_SIZE:-24] for d in (DATA, other, reborn)}
    assert len(bodies) == 3  # same counter 1, three keys


def test_every_bit_flip_and_every_realm_or_key_mismatch_is_refused() -> None:
    """Rule: the header, ciphertext, stamp and tag are all authenticated: any one bit
    flipped is refused; another realm (bound as associated data and into the key) and
    another secret fail the tag; a signed-only datagram is refused as plaintext."""
    sealed = _enc().seal(DATA)
    rx = _enc()
    for i in range(len(sealed)):
        for bit in (0, 7):
            bad = bytearray(sealed)
            bad[i] ^= 1 << bit
            assert rx.open(bytes(bad)) is None, (i, bit)
    assert _enc(realm="other").open(sealed) is None
    assert _enc(Keyring(primary=1, keys={1: bytes(32)})).open(sealed) is None
    assert rx.open(Authenticator(RING).seal(DATA)) is None
    assert rx.stats.plaintext == 1 and rx.stats.bad_tag >= 3
    assert Authenticator(RING).open(sealed) is None  # a signing-only node refuses it
    assert rx.open(sealed) == (DATA, 1)  # refusals left the receiver working


def test_the_biggest_datagram_encrypted_is_exactly_the_wire_limit() -> None:
    """Rule: encryption adds no byte beyond the signed trailer (GCM keeps the length)."""
    payload = b"x" * (MAX_DATAGRAM - len(DATA) + len(SECRET))
    big = encode(1, SENDER, 3, Data(seq=1, kind=0, payload=payload))
    assert len(big) == MAX_DATAGRAM
    sealed = _enc().seal(big)
    assert len(sealed) == WIRE_LIMIT and _enc().open(sealed) == (big, 1)


def test_encrypt_needs_a_keyring() -> None:
    """Rule: NodeConfig(encrypt=True) without a keyring is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"NodeConfig\.encrypt: needs a keyring"):
        NodeConfig(port=9000, encrypt=True)


def test_an_encrypted_cluster_elects_and_delivers_like_a_signed_one() -> None:
    """Rule: encryption is transparent: same leader and deliveries as signing only,
    nothing refused; a signing-only node in an encrypting realm is kept out."""
    results = []
    for encrypt in (False, True):
        net = MemoryNetwork(seed=1)
        nodes = [
            Node(
                NodeConfig(port=9000 + i, broker_capable=True, keyring=RING, encrypt=encrypt),
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
        got = [o for _, _, o in net.log or [] if isinstance(o, MessageDelivered)]
        leaders = {n.stack(1).membership.leader for n in nodes}
        results.append((leaders, len(got), [n.stats.unauthenticated for n in nodes]))
    assert results[0] == results[1]
    assert results[1][0] == {node_id("127.0.0.1", 9003)} and results[1][1] == 4


def test_powergrid_node_encrypt_option() -> None:
    """Rule: `powergrid node --encrypt` with a key turns encryption on; with --insecure
    (no key) it is refused with the ConfigError that names the keyring."""
    from powergrid import cli  # noqa: PLC0415
    from powergrid.cli.node import build_configs  # noqa: PLC0415

    def args(*argv: str) -> object:
        return cli.build_parser("node").parse_args(["node", "--port", "9100", *argv])

    keys = {"POWERGRID_KEYS": f"1 hex:{K1.hex()}"}
    node, _ = build_configs(args("--encrypt"), environ=keys)
    assert node.encrypt and node.keyring == RING
    assert not build_configs(args(), environ=keys)[0].encrypt
    with pytest.raises(ConfigError, match="needs a keyring"):
        build_configs(args("--encrypt", "--insecure"), environ={})
