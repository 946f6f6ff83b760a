"""The book checksum (``crc`` on snapshots and deltas): CRC-32 of a canonical text of a book.

Defined in ``docs/protocol.md`` ("Book checksum") so that a client in any language can
compute it; ``tests/data/conformance/checksums.json`` holds test vectors. The text covers
the top of the book, what a board shows and a bet is struck on: the market's ``status``
and, per selection in book order, its ``selection_id``, ``status``, ``price`` and
``back``/``lay`` levels::

    <status>
    \\n<selection_id>|<status>|<price>|<back>|<lay>      (once per selection)

A missing price is the empty string; a side of the ladder is its levels joined by ``,``,
each ``<price>@<size>``. Numbers are the exact decimal strings of the wire (``"2.10"``
stays ``2.10``). The checksum is the CRC-32 of the text's UTF-8 bytes (the
ISO-HDLC / zlib / PNG CRC-32), as an unsigned 32-bit integer.

A processor keeps one :func:`selection_line` per selection and recomputes only those that
changed (:func:`crc_of_lines`), so a step costs one short text per changed selection and
one CRC of the book.
"""

from __future__ import annotations

import zlib

from protocol.types import Level, Selection, Snapshot


def selection_text(selection: Selection) -> str:
    """A selection's part of the canonical text, with its leading newline."""
    # Concatenation rather than an f-string: this runs once per changed selection on the
    # processor's hot path, and a bookmaker's selection has no ladder.
    price = selection.price
    head = "\n" + selection.selection_id + "|" + selection.status + "|"
    if price is not None:
        head += str(price)
    back = selection.back
    lay = selection.lay
    if back or lay:
        return head + "|" + _levels(back) + "|" + _levels(lay)
    return head + "||"


def selection_line(selection: Selection) -> bytes:
    """:func:`selection_text` as the UTF-8 bytes the checksum reads."""
    return selection_text(selection).encode()


def _levels(levels: tuple[Level, ...]) -> str:
    return ",".join([f"{price}@{size}" for price, size in levels])


def canonical_text(snapshot: Snapshot) -> str:
    """The text the checksum of ``snapshot``'s book is computed over."""
    return snapshot.status + "".join([selection_text(s) for s in snapshot.selections])


#: CRC-32 of each market status (there are five): where a book's CRC starts from.
_STATUS_CRC: dict[str, int] = {}


def crc_of_lines(status: str, lines: list[bytes]) -> int:
    """The checksum of a book given its status and its selections' :func:`selection_line`."""
    start = _STATUS_CRC.get(status)
    if start is None:
        start = _STATUS_CRC[status] = zlib.crc32(status.encode())
    return zlib.crc32(b"".join(lines), start)


def checksum(snapshot: Snapshot) -> int:
    """The checksum of ``snapshot``'s book (its ``crc`` field is not read)."""
    return crc_of_lines(snapshot.status, [selection_line(s) for s in snapshot.selections])
