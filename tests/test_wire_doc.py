"""docs/wire.md's per-type tables are generated from the codec, so they cannot drift.

Regenerate after changing a message: ``.venv/bin/python tests/test_wire_doc.py``.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import attrs

from powergrid import wire

DOC = Path(__file__).resolve().parent.parent / "docs" / "wire.md"
BEGIN = "<!-- BEGIN GENERATED: python tests/test_wire_doc.py -->"
END = "<!-- END GENERATED -->"

_NAMES = {
    "B": "u8",
    "H": "u16",
    "I": "u32",
    "Q": "u64",
    "b": "i8",
    "h": "i16",
    "i": "i32",
    "q": "i64",
    "?": "bool",
    "f": "f32",
    "d": "f64",
}
_SIZES = {"B": 1, "H": 2, "I": 4, "Q": 8, "b": 1, "h": 2, "i": 4, "q": 8, "?": 1, "f": 4, "d": 8}


def _codes(fmt: str) -> list[str]:
    out: list[str] = []
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt.lstrip("!")):
        out.extend([code] * int(count or 1))
    return out


def _first_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n")[0].split())


def tables() -> str:
    parts: list[str] = []
    for code in sorted(wire._LAYOUTS):
        lay = wire._LAYOUTS[code]
        cls = lay.cls
        fields = [f.name for f in attrs.fields(cls)]  # type: ignore[arg-type]
        parts.append(f"### {code}: {lay.name}\n\n{_first_line(cls)}\n")
        rows = ["| offset | field | type |", "| --- | --- | --- |"]
        offset = wire.HEADER_SIZE
        codes = _codes(lay.fixed.format)
        for name, c in zip(fields, codes, strict=False):
            rows.append(f"| {offset} | `{name}` | {_NAMES[c]} |")
            offset += _SIZES[c]
        if lay.tail == "payload":
            rows.append(f"| {offset} | `{fields[-1]}` | bytes, to the end of the datagram |")
        elif lay.tail == "entries":
            assert lay.entry is not None and lay.entry_type is not None
            rows.append(f"| {offset} | count | u16 |")
            entry_names = list(lay.entry_type._fields)  # type: ignore[attr-defined]
            layout = ", ".join(
                f"`{n}` {_NAMES[c]}"
                for n, c in zip(entry_names, _codes(lay.entry.format), strict=True)
            )
            rows.append(
                f"| {offset + 2} | `{fields[-1]}` | count x {lay.entry.size} bytes: {layout} |"
            )
        parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def _render(text: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n\n{tables()}\n{END}{tail}"


def test_wire_doc_tables_match_the_codec() -> None:
    text = DOC.read_text()
    assert _render(text) == text, "docs/wire.md is stale: run python tests/test_wire_doc.py"


HEADER_FIELDS = ("magic", "version", "type", "flags", "group", "sender", "incarnation", "realm")


def _header_rows(text: str) -> list[tuple[int, str, str, str]]:
    section = text.split("## Header", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].isdigit():
            rows.append((int(cells[0]), cells[1], cells[2], cells[3]))
    return rows


def test_wire_doc_header_matches_the_codec() -> None:
    """Rule: docs/wire.md's header table lists the codec's header fields, in order, at
    their offsets, with their types; it names the version, and the size is stated."""
    text = DOC.read_text()
    fmt = wire._HEADER.format
    expected: list[tuple[int, str, str]] = []
    offset = 0
    for name, (count, code) in zip(
        HEADER_FIELDS, re.findall(r"(\d*)([a-zA-Z?])", fmt.lstrip("!")), strict=True
    ):
        if code == "s":
            expected.append((offset, name, f"{count} bytes"))
            offset += int(count)
        else:
            expected.append((offset, name, _NAMES[code]))
            offset += _SIZES[code]
    rows = _header_rows(text)
    assert [r[:3] for r in rows] == expected
    assert offset == wire.HEADER_SIZE and rows[-1][0] == wire.REALM_OFFSET
    assert rows[1][3].startswith(f"{wire.VERSION};")
    assert f"a fixed {wire.HEADER_SIZE}-byte header" in text
    assert "reserved `flags` bits 2-7" in text and wire.RESERVED_FLAGS == 0xFE
    assert "bit 1 (`FLAG_SECRET`)" in text and wire.FLAG_SECRET == 0x02


if __name__ == "__main__":
    DOC.write_text(_render(DOC.read_text()))
    sys.exit(0)
