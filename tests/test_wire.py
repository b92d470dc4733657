"""Wire format: round trips for every registered message type, strict decoding.

The strategies are derived from each type's registered layout, so a message
type added to ``powergrid.wire`` is covered here without editing this file.
"""

from __future__ import annotations

import contextlib
import re
import struct
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from powergrid import wire
from powergrid.errors import DecodeError, PayloadTooLargeError
from powergrid.wire import (
    DEFAULT_REALM_TAG,
    HEADER_SIZE,
    MAX_DATAGRAM,
    Data,
    Nak,
    Stable,
    StableEntry,
    Status,
    StatusEntry,
    UData,
    decode,
    decode_body,
    encode,
    encode_body,
)

NODE = (0x7F000001 << 16) | 9000
ALL_TYPES = sorted(wire._LAYOUTS)

_INT_RANGES = {
    "B": (0, 2**8 - 1),
    "H": (0, 2**16 - 1),
    "I": (0, 2**32 - 1),
    "Q": (0, 2**64 - 1),
    "b": (-(2**7), 2**7 - 1),
    "h": (-(2**15), 2**15 - 1),
    "i": (-(2**31), 2**31 - 1),
    "q": (-(2**63), 2**63 - 1),
}


def _items(fmt: str) -> list[st.SearchStrategy[Any]]:
    """A strategy per item of a struct format (small values are likelier to be valid)."""
    out: list[st.SearchStrategy[Any]] = []
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt.lstrip("!")):
        for _ in range(int(count or 1)):
            if code in _INT_RANGES:
                lo, hi = _INT_RANGES[code]
                out.append(st.one_of(st.integers(max(lo, 0), min(hi, 6)), st.integers(lo, hi)))
            elif code == "?":
                out.append(st.booleans())
            elif code in "df":
                out.append(st.floats(allow_nan=False, allow_infinity=False, width=32))
            else:
                raise AssertionError(f"no strategy for struct code {code!r}")
    return out


@st.composite
def messages(draw: st.DrawFn, code: int) -> wire.Message:
    lay = wire._LAYOUTS[code]
    values = [draw(s) for s in _items(lay.fixed.format)]
    if lay.tail == "payload":
        values.append(draw(st.binary(max_size=64)))
    elif lay.tail == "entries":
        assert lay.entry is not None and lay.entry_type is not None
        entry = st.tuples(*_items(lay.entry.format))
        make = lay.entry_type
        values.append(tuple(make(*e) for e in draw(st.lists(entry, max_size=5))))
    msg = lay.cls(*values)
    assume(msg.problem() is None)
    return msg


any_message = st.sampled_from(ALL_TYPES).flatmap(messages)


@settings(max_examples=400, suppress_health_check=[HealthCheck.filter_too_much])
@given(any_message, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_every_type_round_trips(msg: wire.Message, group: int, incarnation: int) -> None:
    """decode(encode(m)) gives back m, the header fields, and the same body as encode_body."""
    data = encode(group, NODE, incarnation, msg)
    env = decode(data)
    assert (env.group, env.sender, env.incarnation) == (group, NODE, incarnation)
    assert env.message == msg
    assert data[HEADER_SIZE:] == encode_body(msg)
    assert decode_body(msg.TYPE, encode_body(msg)) == msg


def test_every_type_has_a_unique_code_and_a_strategy() -> None:
    """Registered codes are unique by construction; each one gets examples above."""
    assert ALL_TYPES == sorted(set(ALL_TYPES))
    assert {1, 2, 3, 4, 5, 6, 7} <= set(ALL_TYPES)


@settings(max_examples=500)
@given(st.binary(max_size=MAX_DATAGRAM + 10))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    """Any bytes either decode or raise DecodeError: nothing else escapes."""
    with contextlib.suppress(DecodeError):
        decode(data)


def _mutated(msg: wire.Message, flips: list[tuple[int, int]], resize: int) -> bytes:
    """``msg`` encoded, with bytes set at ``flips`` and cut or extended by ``resize``."""
    data = bytearray(encode(1, NODE, 1, msg))
    for pos, value in flips:
        data[pos % len(data)] = value
    if resize < 0:
        del data[resize:]
    else:
        data.extend(b"\x00" * resize)
    return bytes(data)


@settings(max_examples=500, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    any_message,
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(-8, 8),
)
def test_mutated_datagrams_raise_only_decode_error(
    msg: wire.Message, flips: list[tuple[int, int]], resize: int
) -> None:
    """Valid datagrams with bytes changed, cut or extended decode or raise DecodeError."""
    data = _mutated(msg, flips, resize)
    try:
        env = decode(data)
    except DecodeError:
        return
    assert env.message.problem() is None


def _outcome(data: bytes, fn: Any) -> object:
    try:
        return fn(data)
    except DecodeError as exc:
        return ("DecodeError", str(exc))


@settings(max_examples=500, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    any_message,
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    st.integers(-8, 8),
)
def test_fast_path_agrees_with_the_checked_path(
    msg: wire.Message, flips: list[tuple[int, int]], resize: int
) -> None:
    """decode's generated per-type fast path gives exactly what the checked path gives:
    the same envelope, or DecodeError with the same message."""
    data = _mutated(msg, flips, resize)
    assert _outcome(data, decode) == _outcome(data, wire._decode_checked)


def _datagram() -> bytes:
    return encode(7, NODE, 3, Data(seq=1, kind=0, payload=b"hello"))


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"PG\x01", "truncated"),
        (b"XX" + _datagram()[2:], "bad magic"),
        (_datagram()[:2] + b"\x09" + _datagram()[3:], "unknown version 9"),
        (_datagram()[:3] + b"\xee" + _datagram()[4:], "unknown message type 238"),
        (_datagram()[:4] + b"\x80" + _datagram()[5:], "unknown flags"),
        (_datagram()[: HEADER_SIZE + 3], "Data truncated"),
        (_datagram() + b"x" * MAX_DATAGRAM, "oversized"),
        (
            encode(1, NODE, 1, Nak(origin=NODE, origin_incarnation=1, first=5, last=4)),
            "range 5..4",
        ),
        (
            encode(1, NODE, 1, Nak(origin=NODE, origin_incarnation=1, first=1, last=1)) + b"!",
            "trailing",
        ),
    ],
)
def test_decode_errors_say_what_was_wrong(data: bytes, says: str) -> None:
    with pytest.raises(DecodeError, match=re.escape(says)):
        decode(data)


def test_sender_must_be_a_node_id() -> None:
    data = bytearray(_datagram())
    data[9:17] = struct.pack("!Q", 1 << 50)
    with pytest.raises(DecodeError, match="not a node id"):
        decode(bytes(data))


def test_entry_count_must_match_length() -> None:
    data = encode(1, NODE, 1, Status(view_id=1, entries=(StatusEntry(NODE, 1, 2),)))
    with pytest.raises(DecodeError, match="says 1 entries"):
        decode(data[:-1])
    with pytest.raises(DecodeError, match="not sorted"):
        decode(encode(1, NODE, 1, Status(view_id=1, entries=(StatusEntry(NODE, 1, 2),) * 2)))
    with pytest.raises(DecodeError, match="above highest"):
        decode(encode(1, NODE, 1, Stable(view_id=1, entries=(StableEntry(NODE, 1, 3, 2),))))


def test_oversized_payload_fails_at_encode_with_a_clear_error() -> None:
    room = MAX_DATAGRAM - HEADER_SIZE - struct.calcsize("!QB")
    assert len(encode(1, NODE, 1, Data(seq=1, kind=0, payload=b"x" * room))) == MAX_DATAGRAM
    with pytest.raises(PayloadTooLargeError, match="over the 1400-byte limit"):
        encode(1, NODE, 1, Data(seq=1, kind=0, payload=b"x" * (room + 1)))


def test_out_of_range_fields_fail_at_encode() -> None:
    with pytest.raises(ValueError, match="header field out of range"):
        encode(2**32, NODE, 1, Data(seq=1, kind=0, payload=b""))
    with pytest.raises(ValueError, match="cannot encode"):
        encode(1, NODE, 1, UData(seq=2**64, base=1, kind=0, payload=b""))


def test_header_layout_is_as_documented() -> None:
    """docs/wire.md: magic, version 2, type, flags, group, sender, incarnation, realm; 25 bytes."""
    data = _datagram()
    assert HEADER_SIZE == 25
    header = (b"PG", 2, 1, 0, 7, NODE, 3, DEFAULT_REALM_TAG)
    assert struct.unpack("!2sBBBIQII", data[:HEADER_SIZE]) == header
    assert data[HEADER_SIZE:] == struct.pack("!QB", 1, 0) + b"hello"
    assert len(data) == HEADER_SIZE + 9 + 5


# -------------------------------------------------------------- record_builder


@pytest.mark.parametrize("code", ALL_TYPES)
def test_record_builder_matches_the_keyword_constructor(code: int) -> None:
    lay = wire._LAYOUTS[code]
    fields = attrs.fields(lay.cls)  # type: ignore[arg-type]
    values = [(i + 1) if f.type != "bytes" else b"p" for i, f in enumerate(fields)]
    built = lay.build(*values)
    plain = lay.cls(**{f.name: v for f, v in zip(fields, values, strict=True)})
    assert type(built) is type(plain)
    assert built == plain and hash(built) == hash(plain) and repr(built) == repr(plain)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        built.seq = 2  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        lay.build(*values[:-1])  # every field is required, positionally


def test_record_builder_refuses_what_it_cannot_build_exactly() -> None:
    @attrs.frozen
    class Checked:
        x: int = attrs.field(validator=attrs.validators.instance_of(int))

    @attrs.frozen(cache_hash=True)
    class Cached:
        x: int

    @attrs.frozen(slots=False)
    class Dicty:
        x: int

    @attrs.frozen
    class Hooked:
        x: int

        def __attrs_post_init__(self) -> None:
            pass

    for cls in (Checked, Cached, Dicty, Hooked):
        with pytest.raises(TypeError):
            wire.record_builder(cls)
