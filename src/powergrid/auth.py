"""Authenticated datagrams: a keyring, a signing counter and a replay window.

Theory of operation
-------------------
**Guarantees.** With a group key configured, every datagram a node sends
carries a trailer: the id of the key that signed it, a counter, and a tag
(HMAC-SHA256 over the whole datagram, header and trailer fields included,
truncated to 16 bytes). :meth:`Authenticator.open` refuses, before anything
else reads the datagram, one without a trailer, signed by a key the keyring
does not accept, or whose tag does not match: an outsider without a key can
neither forge nor alter a datagram (one flipped bit anywhere is refused).
:meth:`Authenticator.accept` then refuses a captured datagram replayed later:
each sender numbers its datagrams 1, 2, ... per incarnation (one counter for
all its groups and destinations), and the receiver keeps, per sender, a
sliding window of the last :data:`REPLAY_WINDOW` counters (like IPsec and
DTLS): a counter seen before, or older than the window, is refused. A higher
incarnation (in the signed header, so not forgeable) starts a fresh window; a
lower one is refused. Incarnations compare as serial numbers
(:func:`~powergrid.types.incarnation_newer`), so a new life after the wrap of
the 32-bit incarnation (..., 2**32-1, then 0, 1, ...) replaces the old window
instead of being refused as older for good.

**Not guaranteed.** Secrecy, unless ``encrypt=True`` (then the body is
AES-256-GCM under a key per sender life derived with HKDF, the counter as
nonce, the realm, header and stamp as associated data: see :class:`_Aead`;
headers stay readable either way), and anything about
what a holder of a key sends: a keyed member is trusted as a member. Delivery
of datagrams delayed by more than the window (reordered past
:data:`REPLAY_WINDOW` later datagrams of the same sender) is refused, like
loss; the protocols repair loss.

**Assumptions.** Keys are at least :data:`MIN_KEY_BYTES` random bytes shared
by every node of the data centre. A restarted process uses a higher
incarnation (the node already requires it), so its counter may start again
at 1.

**Driving.** :class:`~powergrid.node.Node` calls :meth:`Authenticator.seal`
on every datagram after encoding it, and on receipt :meth:`Authenticator.open`
(tag) before decoding and :meth:`Authenticator.accept` (replay) right after,
with the sender and incarnation the decoder read from the verified header. It
keeps no time and has no timeouts. Refusals are counted in
:class:`AuthStats`; nothing a peer sends raises.

**Realm.** The node's realm name (:mod:`powergrid.types`) is bound into
every tag: each key signs and checks with ``HMAC-SHA256(secret, "powergrid
realm key\0" + realm)``, not with the secret itself, so a datagram of another
realm fails its tag even where two realms share a key (and the header's 32-bit
realm tag, which the node checks first, collides).

**Keys.** :class:`Keyring`: a *primary* key that signs, and every key
accepted (by id), so keys rotate without a stop: add the new key everywhere,
then make it primary everywhere, then drop the old one. A keyring comes from
a file (:meth:`Keyring.from_file`) or the ``POWERGRID_KEYS`` environment
variable (:meth:`Keyring.from_env`), never from a command-line argument; its
``repr`` never shows a secret. See ``docs/security.md``.

Trailer layout, after the body (big-endian)::

    key id u16 | counter u48 | tag 16 bytes = HMAC-SHA256(key, everything before the tag)[:16]

and the header's ``flags`` bit 0 (:data:`~powergrid.wire.FLAG_AUTH`) is set.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from powergrid.errors import ConfigError, UsageError
from powergrid.types import DEFAULT_REALM, incarnation_newer, realm_tag
from powergrid.wire import AUTH_TRAILER_SIZE, FLAG_AUTH, FLAG_SECRET, HEADER_SIZE, WIRE_LIMIT

__all__ = [
    "ENV_VAR",
    "MAX_COUNTER",
    "MAX_SENDERS",
    "MIN_KEY_BYTES",
    "REPLAY_WINDOW",
    "TAG_SIZE",
    "AuthStats",
    "Authenticator",
    "Keyring",
    "new_key_text",
    "realm_key",
    "write_key_file",
]

ENV_VAR = "POWERGRID_KEYS"
"""The environment variable a keyring may come from (same text as a key file)."""
MIN_KEY_BYTES = 16
"""The shortest secret accepted, in bytes (128 bits)."""
TAG_SIZE = 16
"""Bytes of the HMAC-SHA256 tag kept (128 bits)."""
MAX_KEY_ID = 0xFFFF
MAX_COUNTER = (1 << 48) - 1
"""The last counter a node may use in one incarnation."""
REPLAY_WINDOW = 1024
"""Counters remembered per sender: older ones are refused."""
MAX_SENDERS = 65536
"""Senders whose windows a receiver keeps; datagrams of further senders are refused."""

_STAMP_SIZE = AUTH_TRAILER_SIZE - TAG_SIZE  # key id u16 + counter u48
_SIGNED_MIN = HEADER_SIZE + AUTH_TRAILER_SIZE
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1
_CLEARED = tuple(bytes((flags & ~FLAG_AUTH,)) for flags in range(256))
"""The flags byte with the auth bit cleared (other bits kept: the decoder refuses them)."""
_SECRET_FLAGS = FLAG_AUTH | FLAG_SECRET
_ID_AT = 9  # header bytes [9:21]: the sender id (u64) and incarnation (u32)
_ID_END = 21
_NONCE_PAD = bytes(6)
assert _STAMP_SIZE == 8


def _key_pairs(
    value: Mapping[int, bytes] | Iterable[tuple[int, bytes]],
) -> tuple[tuple[int, bytes], ...]:
    pairs = list(value.items()) if isinstance(value, Mapping) else list(value)
    return tuple(sorted(pairs, key=lambda p: p[0]))


@attrs.frozen(kw_only=True)
class Keyring:
    """The group keys: ``keys`` maps key id (1..65535) to secret, ``primary`` signs.

    Every key in ``keys`` is accepted on receipt. Secrets are bytes, at least
    :data:`MIN_KEY_BYTES` long. Raises :class:`ConfigError` saying what to fix.
    The ``repr`` shows key ids only.
    """

    primary: int
    keys: tuple[tuple[int, bytes], ...] = attrs.field(converter=_key_pairs, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.keys:
            raise ConfigError("a keyring needs at least one key")
        seen: set[int] = set()
        for kid, secret in self.keys:
            if type(kid) is not int or not 1 <= kid <= MAX_KEY_ID:
                raise ConfigError(f"key id {kid!r} must be an integer in 1..{MAX_KEY_ID}")
            if kid in seen:
                raise ConfigError(f"key id {kid} is given twice; give each key its own id")
            seen.add(kid)
            if not isinstance(secret, bytes):
                raise ConfigError(f"key {kid}: the secret must be bytes")
            if len(secret) < MIN_KEY_BYTES:
                raise ConfigError(
                    f"key {kid} is {len(secret)} bytes; use at least {MIN_KEY_BYTES} random "
                    f"bytes (e.g. {2 * MIN_KEY_BYTES} hex digits from `openssl rand -hex 32`)"
                )
        if self.primary not in seen:
            raise ConfigError(
                f"primary key id {self.primary} is not among the keys {sorted(seen)}; "
                "mark one of them primary"
            )

    def __repr__(self) -> str:
        return f"Keyring(primary={self.primary}, key_ids={list(self.key_ids)})"

    @property
    def key_ids(self) -> tuple[int, ...]:
        """The ids of the accepted keys, sorted."""
        return tuple(kid for kid, _ in self.keys)

    # ------------------------------------------------------------ loading

    @classmethod
    def parse(cls, text: str, *, source: str = "keyring") -> Keyring:
        """A keyring from its text form; ``source`` names it in error messages.

        One key per line (or per ``;``-separated entry)::

            # comment
            1 hex:00112233445566778899aabbccddeeff
            2 base64:ABEiM0RVZneImaq7zN3u/w== primary

        A key id, the secret as ``hex:`` or ``base64:``, and ``primary`` on
        the key that signs (optional when there is only one key).
        Raises :class:`ConfigError`.
        """
        keys: list[tuple[int, bytes]] = []
        primaries: list[int] = []
        for number, raw in enumerate(text.replace(";", "\n").splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{source}, entry {number}"
            parts = line.split()
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "primary"):
                raise ConfigError(
                    f"{where}: expected 'ID hex:SECRET' or 'ID base64:SECRET', "
                    "optionally followed by 'primary'"
                )
            try:
                kid = int(parts[0])
            except ValueError:
                raise ConfigError(f"{where}: key id {parts[0]!r} is not a number") from None
            keys.append((kid, _secret(parts[1], where)))
            if len(parts) == 3:
                primaries.append(kid)
        if not keys:
            raise ConfigError(f"{source} holds no key")
        if len(primaries) > 1:
            raise ConfigError(f"{source} marks keys {primaries} primary; mark exactly one")
        if not primaries:
            if len(keys) > 1:
                raise ConfigError(
                    f"{source} has {len(keys)} keys and none is marked 'primary'; "
                    "mark the one that signs"
                )
            primaries.append(keys[0][0])
        return cls(primary=primaries[0], keys=keys)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """A keyring from a key file (see :meth:`parse`).

        Refuses a file that others may read or write (``chmod 600`` or ``640``).
        Raises :class:`ConfigError`.
        """
        p = Path(path)
        try:
            mode = p.stat().st_mode
            if mode & (stat.S_IROTH | stat.S_IWOTH):
                raise ConfigError(
                    f"key file {p} can be read or written by any user; run chmod 600 {p}"
                )
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read key file {p}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"key file {p} is not UTF-8 text") from exc
        return cls.parse(text, source=f"key file {p}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Keyring | None:
        """The keyring in ``$POWERGRID_KEYS`` (see :meth:`parse`), or None if it is unset.

        Raises :class:`ConfigError` if it is set but invalid (or empty).
        """
        env = os.environ if environ is None else environ
        text = env.get(ENV_VAR)
        if text is None:
            return None
        return cls.parse(text, source=f"${ENV_VAR}")


def new_key_text(key_id: int = 1, *, secret: bytes | None = None) -> str:
    """The text of a key file holding one new random 32-byte key, ``key_id``, primary.

    ``secret`` (tests only) fixes the key instead of drawing it from
    :func:`secrets.token_bytes`. Raises :class:`ConfigError` for a bad id or secret.
    """
    key = secrets.token_bytes(32) if secret is None else secret
    Keyring(primary=key_id, keys={key_id: key})  # validates the id and the key
    return (
        "# powergrid key file (docs/security.md), made by `powergrid keygen`.\n"
        "# Give every node of the data centre a copy, and keep it chmod 600.\n"
        f"{key_id} hex:{key.hex()} primary\n"
    )


def write_key_file(path: str | os.PathLike[str], *, key_id: int = 1, force: bool = False) -> None:
    """Write a new key file (:func:`new_key_text`) at ``path``, readable by its owner only.

    The file is created with mode 0600 (never wider, whatever the umask). An existing
    file is refused unless ``force``; then it is replaced whole (written beside it,
    then renamed). Raises :class:`ConfigError` saying what to fix.
    """
    p = Path(path)
    text = new_key_text(key_id).encode("ascii")
    target = p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp") if force else p
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"key file {p} exists; give --force to replace it (nodes using the old key "
            "then refuse this one: see key rotation in docs/security.md)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot create key file {p}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(text)
        if force:
            os.replace(target, p)
    except OSError as exc:
        if force:
            target.unlink(missing_ok=True)
        raise ConfigError(f"cannot write key file {p}: {exc.strerror or exc}") from exc


def _secret(spec: str, where: str) -> bytes:
    kind, sep, body = spec.partition(":")
    try:
        if sep and kind == "hex":
            return bytes.fromhex(body)
        if sep and kind == "base64":
            return base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error):
        raise ConfigError(f"{where}: the secret is not valid {kind}") from None
    raise ConfigError(f"{where}: write the secret as hex:DIGITS or base64:TEXT")


@attrs.define(kw_only=True)
class AuthStats:
    """Counters of one node's authentication layer."""

    sealed: int = 0
    """Datagrams signed."""
    unsigned: int = 0
    """Refused: no trailer (flag not set, too short) or longer than the wire limit."""
    unknown_key: int = 0
    """Refused: signed with a key id the keyring does not accept."""
    bad_tag: int = 0
    """Refused: the tag does not match (forged or altered)."""
    duplicate: int = 0
    """Refused by the replay window: this counter was seen already."""
    too_old: int = 0
    """Refused by the replay window: the counter is older than the window."""
    old_incarnation: int = 0
    """Refused: an incarnation older than the sender's latest seen."""
    senders_full: int = 0
    """Refused: a new sender while :data:`MAX_SENDERS` windows are kept."""
    plaintext: int = 0
    """Refused by a node that encrypts: a datagram signed but not encrypted."""


def realm_key(secret: bytes, realm: str) -> bytes:
    """The key that signs for ``realm`` with ``secret``:
    ``HMAC-SHA256(secret, b"powergrid realm key\0" + realm)`` (32 bytes)."""
    return hmac.digest(secret, b"powergrid realm key\0" + realm.encode("ascii"), "sha256")


class _Mac:
    """HMAC-SHA256 (RFC 2104) of one key, its padded key hashes computed once.

    Equal to ``hmac.digest(key, msg, "sha256")``, about twice as fast for a
    short datagram, because the two key blocks are not hashed again each time.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        block = hashlib.sha256().block_size
        if len(key) > block:
            key = hashlib.sha256(key).digest()
        key = key.ljust(block, b"\0")
        self._inner = hashlib.sha256(bytes(k ^ 0x36 for k in key))
        self._outer = hashlib.sha256(bytes(k ^ 0x5C for k in key))

    def tag(self, msg: bytes | bytearray | memoryview) -> bytes:
        inner = self._inner.copy()
        inner.update(msg)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:TAG_SIZE]


class _Aead:
    """AES-256-GCM of one key id: a key per (sender, incarnation), derived with HKDF.

    ``secret`` is the realm-bound key (:func:`realm_key`). The key of a sender's life
    is ``HKDF-SHA256(secret, salt=None, info="powergrid aes-gcm\\0" + sender u64 +
    incarnation u32, 32 bytes)``, and its nonce is the datagram's counter (6 zero
    bytes, then the u48 counter). A nonce is never used twice under one key: the
    counter rises by one per datagram sealed in a life and :meth:`Authenticator.seal`
    stops at :data:`MAX_COUNTER`; a life is one (sender, incarnation), and a restart
    must take a newer incarnation (the node requires it). Keys of peers are derived
    on first use and kept (at most ``limit``) once a datagram under them verified.
    Needs the ``cryptography`` package (the ``crypto`` extra).
    """

    __slots__ = ("_aesgcm", "_hash", "_hkdf", "_invalid", "_keys", "_limit", "_secret")

    def __init__(self, secret: bytes, limit: int) -> None:
        from cryptography.exceptions import InvalidTag  # noqa: PLC0415
        from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: PLC0415

        self._secret = secret
        self._aesgcm = AESGCM
        self._hkdf = HKDF
        self._hash = hashes.SHA256
        self._invalid = InvalidTag
        self._keys: dict[bytes, Any] = {}
        self._limit = limit

    def key(self, life: bytes) -> Any:
        """The cipher of ``life`` (header bytes: sender u64 + incarnation u32)."""
        cipher = self._keys.get(life)
        if cipher is None:
            hkdf = self._hkdf(
                algorithm=self._hash(), length=32, salt=None, info=b"powergrid aes-gcm\0" + life
            )
            cipher = self._aesgcm(hkdf.derive(self._secret))
        return cipher

    def keep(self, life: bytes, cipher: Any) -> None:
        """Keep the cipher of a life whose datagram verified (bounded: the oldest goes)."""
        keys = self._keys
        if life not in keys:
            if len(keys) >= self._limit:
                del keys[next(iter(keys))]
            keys[life] = cipher


class Authenticator:
    """Signs outgoing datagrams and checks incoming ones for one node (see the module doc).

    ``keyring`` gives the keys; ``realm`` (the node's realm name) is bound into
    every tag (see the module doc); ``max_senders`` bounds the replay windows kept.
    ``encrypt`` seals with AES-256-GCM instead of HMAC (see *Encryption* in
    docs/security.md): the body is encrypted, the header, key id and counter
    authenticated in the clear, and only encrypted datagrams are accepted.
    Raises :class:`ConfigError` for an invalid realm or ``max_senders``, or for
    ``encrypt`` without the ``cryptography`` package.
    """

    __slots__ = (
        "_ad",
        "_aead",
        "_counter",
        "_keys",
        "_max_senders",
        "_primary",
        "_stamp_base",
        "_windows",
        "stats",
    )

    def __init__(
        self,
        keyring: Keyring,
        *,
        realm: str = DEFAULT_REALM,
        max_senders: int = MAX_SENDERS,
        encrypt: bool = False,
    ) -> None:
        if max_senders < 1:
            raise ConfigError(f"max_senders {max_senders} must be at least 1")
        realm_tag(realm)  # raises ConfigError for an invalid name
        self._keys = {kid: _Mac(realm_key(secret, realm)) for kid, secret in keyring.keys}
        self._primary = self._keys[keyring.primary]
        self._aead: dict[int, _Aead] | None = None
        self._ad = b"powergrid realm\0" + realm.encode("ascii") + b"\0"
        if encrypt:
            try:
                self._aead = {
                    kid: _Aead(realm_key(secret, realm), max_senders)
                    for kid, secret in keyring.keys
                }
            except ImportError:
                raise ConfigError(
                    "encrypt=True needs the cryptography package: pip install 'powergrid[crypto]'"
                ) from None
        self._stamp_base = keyring.primary << 48
        self._counter = 0
        self._max_senders = max_senders
        # sender -> [incarnation, highest counter, bitmap: bit i is highest - i seen]
        self._windows: dict[int, list[int]] = {}
        self.stats = AuthStats()

    @property
    def counter(self) -> int:
        """The counter of the last datagram sealed (0 before the first)."""
        return self._counter

    @property
    def senders(self) -> int:
        """How many senders' replay windows are kept."""
        return len(self._windows)

    def seal(self, datagram: bytes) -> bytes:
        """``datagram`` (as :func:`~powergrid.wire.encode` made it) with the auth flag and trailer.

        Raises :class:`UsageError` once :data:`MAX_COUNTER` datagrams were
        sealed in this incarnation (restart the node with a higher one).
        """
        counter = self._counter + 1
        if counter > MAX_COUNTER:
            raise UsageError("authentication counter exhausted: restart with a higher incarnation")
        self._counter = counter
        if self._aead is not None:
            return self._encrypt(datagram, counter)
        signed = bytearray(datagram)
        signed[4] |= FLAG_AUTH
        signed += (self._stamp_base | counter).to_bytes(_STAMP_SIZE, "big")
        signed += self._primary.tag(signed)
        self.stats.sealed += 1
        return bytes(signed)

    def open(self, datagram: bytes) -> tuple[bytes, int] | None:
        """The datagram without its trailer (auth flag cleared) and its counter, or None.

        None, counted in :attr:`stats`, for a datagram without a valid tag of an
        accepted key. Never raises for any input.
        """
        size = len(datagram)
        if size < _SIGNED_MIN or size > WIRE_LIMIT or not datagram[4] & FLAG_AUTH:
            self.stats.unsigned += 1
            return None
        if self._aead is not None:
            return self._decrypt(datagram)
        end = size - TAG_SIZE
        body_end = end - _STAMP_SIZE
        stamp = int.from_bytes(datagram[body_end:end], "big")
        mac = self._keys.get(stamp >> 48)
        if mac is None:
            self.stats.unknown_key += 1
            return None
        if not hmac.compare_digest(mac.tag(datagram[:end]), datagram[end:]):
            self.stats.bad_tag += 1
            return None
        inner = datagram[:4] + _CLEARED[datagram[4]] + datagram[5:body_end]
        return inner, stamp & MAX_COUNTER

    def _encrypt(self, datagram: bytes, counter: int) -> bytes:
        """Seal with AES-GCM: header (flags AUTH|SECRET) | ciphertext | stamp | tag."""
        assert self._aead is not None
        header = bytearray(datagram[:HEADER_SIZE])
        header[4] |= _SECRET_FLAGS
        stamp = (self._stamp_base | counter).to_bytes(_STAMP_SIZE, "big")
        aead = self._aead[self._stamp_base >> 48]
        life = bytes(header[_ID_AT:_ID_END])
        cipher = aead.key(life)
        aead.keep(life, cipher)  # our own life: derived once
        nonce = _NONCE_PAD + stamp[2:]
        sealed: bytes = cipher.encrypt(nonce, datagram[HEADER_SIZE:], self._ad + header + stamp)
        self.stats.sealed += 1
        return bytes(header) + sealed[:-TAG_SIZE] + stamp + sealed[-TAG_SIZE:]

    def _decrypt(self, datagram: bytes) -> tuple[bytes, int] | None:
        """Open an AES-GCM datagram (see :meth:`_encrypt`), or None (counted)."""
        assert self._aead is not None
        if datagram[4] & _SECRET_FLAGS != _SECRET_FLAGS:
            self.stats.plaintext += 1
            return None
        end = len(datagram) - TAG_SIZE
        body_end = end - _STAMP_SIZE
        stamp = datagram[body_end:end]
        aead = self._aead.get(int.from_bytes(stamp[:2], "big"))
        if aead is None:
            self.stats.unknown_key += 1
            return None
        life = datagram[_ID_AT:_ID_END]
        cipher = aead.key(life)
        header = datagram[:HEADER_SIZE]
        try:
            body = cipher.decrypt(
                _NONCE_PAD + stamp[2:],
                datagram[HEADER_SIZE:body_end] + datagram[end:],
                self._ad + header + stamp,
            )
        except aead._invalid:
            self.stats.bad_tag += 1
            return None
        aead.keep(life, cipher)
        flags = bytes((datagram[4] & ~_SECRET_FLAGS,))
        return header[:4] + flags + header[5:] + body, int.from_bytes(stamp[2:], "big")

    def accept(self, sender: int, incarnation: int, counter: int) -> bool:
        """Whether ``counter`` of ``sender`` in ``incarnation`` is fresh; records it if so.

        Call only with a counter from :meth:`open` and the sender and
        incarnation of the same (decoded) datagram. Refusals are counted.
        """
        win = self._windows.get(sender)
        if win is None:
            if len(self._windows) >= self._max_senders:
                self.stats.senders_full += 1
                return False
            self._windows[sender] = [incarnation, counter, 1]
            return True
        if incarnation != win[0]:
            if not incarnation_newer(incarnation, win[0]):  # serial: survives the wrap
                self.stats.old_incarnation += 1
                return False
            win[0] = incarnation
            win[1] = counter
            win[2] = 1
            return True
        highest = win[1]
        if counter > highest:
            shift = counter - highest
            win[1] = counter
            win[2] = ((win[2] << shift) | 1) & _WINDOW_MASK if shift < REPLAY_WINDOW else 1
            return True
        back = highest - counter
        if back >= REPLAY_WINDOW:
            self.stats.too_old += 1
            return False
        bit = 1 << back
        if win[2] & bit:
            self.stats.duplicate += 1
            return False
        win[2] |= bit
        return True
