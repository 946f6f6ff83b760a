"""The conformance corpus (``tests/data/conformance``) against ``protocol.apply``.

The same files run against the SDK's ``book.ts`` (``web/packages/client/test``) and the
plain board's script (``web/e2e``); ``docs/protocol.md`` ("Conformance corpus") says how a
runner reads them.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import msgspec
import pytest

import protocol
from protocol.checksum import canonical_text

CORPUS = Path(__file__).parents[1] / "data" / "conformance"
CASES: list[dict[str, Any]] = json.loads((CORPUS / "cases.json").read_text("utf-8"))["cases"]
VECTORS: list[dict[str, Any]] = json.loads((CORPUS / "checksums.json").read_text("utf-8"))[
    "vectors"
]


def run(messages: list[dict[str, Any]]) -> tuple[protocol.Snapshot | None, list[dict[str, Any]]]:
    """Receive ``messages`` as a client does: the book after them and every refusal."""
    book: protocol.Snapshot | None = None
    refusals: list[dict[str, Any]] = []
    for at, raw in enumerate(messages):
        message = protocol.decode_server(json.dumps(raw))
        try:
            if isinstance(message, protocol.Snapshot):
                protocol.verify(message)
                book = message
            else:
                assert isinstance(message, protocol.Delta) and book is not None
                book = protocol.apply(book, message)
        except protocol.ApplyError as exc:
            refusals.append({"at": at, "reason": exc.reason})
    return book, refusals


def content(book: protocol.Snapshot) -> protocol.Snapshot:
    """What a book is, without how it arrived (``reset``, ``conflated``) or its ``crc``."""
    return msgspec.structs.replace(book, reset=False, conflated=False, crc=None)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case(case: dict[str, Any]) -> None:
    book, refusals = run(case["messages"])
    assert refusals == case["refusals"]
    if case["book"] is None:
        assert book is None
        return
    expected = msgspec.convert(case["book"], protocol.Snapshot)
    assert book is not None
    assert content(book) == content(expected)
    if expected.crc is not None:
        assert protocol.checksum(book) == expected.crc


def test_the_corpus_covers_every_refusal_and_each_case_is_named_once() -> None:
    reasons = {r["reason"] for case in CASES for r in case["refusals"]}
    assert reasons == {"gap", "stale", "epoch", "market", "checksum"}
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_checksum_vector(vector: dict[str, Any]) -> None:
    book = msgspec.convert(vector["book"], protocol.Snapshot)
    assert canonical_text(book) == vector["text"]
    assert zlib.crc32(vector["text"].encode()) == vector["crc"]
    assert protocol.checksum(book) == vector["crc"] == book.crc
