"""Wire size: bytes on the wire per delta for each encoding the gateway offers (JSON,
MessagePack; one delta per WebSocket message or batches of them) and for
permessage-deflate (RFC 7692), which the gateway does not negotiate today, measured here
on the very same frames with zlib, with the CPU it would cost.

    python -m loadtest.wire [--deltas 20000] [--json out.json]

The deltas are the benchmark's (``loadtest.payloads.DeltaSource``: round-robin over ten
markets, two of three prices moving). Sizes are whole WebSocket frames as a server sends
them (header included, unmasked); a batch's size is divided by the deltas it holds.

Deflate, two ways a server can run it:

* ``no_context_takeover`` (``server_no_context_takeover``): every message is compressed
  alone, so the compressed frame is the same for every client and can be made once per
  message and shared, as the gateway shares its frames today: the CPU is per message,
  not per connection;
* with context takeover (the default when a client offers the extension): one compressor
  per connection that remembers the previous messages (a delta compresses against the
  last ones of its market): fewer bytes, but every message is compressed once per
  connection, and each compressor holds zlib's state: ``2^(wbits+2) + 2^(memLevel+9)``
  bytes (256 KiB at the defaults 15/8; 2^(10+2) + 2^(1+9) = 5 KiB at wbits 10,
  memLevel 1, which a server would have to ask for with ``server_max_window_bits``).

The CPU figures are this process's ``time.process_time`` per operation, on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import protocol
from channels.frame import OP_BINARY, OP_TEXT, ws_frame
from loadtest.payloads import DeltaSource, market_ids

BATCHES = (10, 45)
"""Batch sizes: ten deltas, and about what the batched gateway's messages held in the
benchmark (``ws_5k`` oddstream_batched, ``batched_deltas_per_message``)."""
_TAIL = b"\x00\x00\xff\xff"


def json_batch(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def msgpack_batch(items: list[bytes]) -> bytes:
    n = len(items)
    head = bytes((0x90 | n,)) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
    return head + b"".join(items)


def deflate_alone(payload: bytes, wbits: int = 15, level: int = 1) -> bytes:
    """One message compressed with a fresh context (no context takeover), the tail RFC
    7692 drops removed."""
    c = zlib.compressobj(level, zlib.DEFLATED, -wbits)
    return (c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH))[: -len(_TAIL)]


class Takeover:
    """One connection's compressor with context takeover."""

    def __init__(self, wbits: int = 15, mem_level: int = 8, level: int = 1):
        self.c = zlib.compressobj(level, zlib.DEFLATED, -wbits, mem_level)

    def __call__(self, payload: bytes) -> bytes:
        return (self.c.compress(payload) + self.c.flush(zlib.Z_SYNC_FLUSH))[: -len(_TAIL)]


def zlib_state_bytes(wbits: int, mem_level: int) -> int:
    """zlib's documented deflate memory: 2^(windowBits+2) + 2^(memLevel+9)."""
    return (1 << (wbits + 2)) + (1 << (mem_level + 9))


def _per_delta(frames: Iterable[bytes], deltas: int) -> float:
    return round(sum(len(f) for f in frames) / deltas, 1)


def _cpu_us(op: Callable[[bytes], bytes], payloads: list[bytes]) -> float:
    t0 = time.process_time()
    for p in payloads:
        op(p)
    return round((time.process_time() - t0) / len(payloads) * 1e6, 2)


def measure(deltas: int = 20_000) -> dict[str, Any]:
    source = DeltaSource(market_ids(10))
    js = [source.next(ts=1_800_000_000_000 + i) for i in range(deltas)]
    mp = [protocol.encode_msgpack(protocol.decode_server(j)) for j in js]
    rows: dict[str, Any] = {
        "json": _per_delta((ws_frame(OP_TEXT, j) for j in js), deltas),
        "msgpack": _per_delta((ws_frame(OP_BINARY, m) for m in mp), deltas),
    }
    for k in BATCHES:
        cut = deltas - deltas % k
        groups = range(0, cut, k)
        rows[f"json_batch_{k}"] = _per_delta(
            (ws_frame(OP_TEXT, json_batch(js[i : i + k])) for i in groups), cut
        )
        rows[f"msgpack_batch_{k}"] = _per_delta(
            (ws_frame(OP_BINARY, msgpack_batch(mp[i : i + k])) for i in groups), cut
        )
        batch = [json_batch(js[i : i + k]) for i in groups]
        rows[f"json_batch_{k}_deflate_alone"] = _per_delta(
            (ws_frame(OP_TEXT, deflate_alone(b)) for b in batch), cut
        )
    rows["json_deflate_alone"] = _per_delta(
        (ws_frame(OP_TEXT, deflate_alone(j)) for j in js), deltas
    )
    rows["msgpack_deflate_alone"] = _per_delta(
        (ws_frame(OP_BINARY, deflate_alone(m)) for m in mp), deltas
    )
    small = Takeover(wbits=10, mem_level=1)
    takeover = Takeover()
    rows["json_deflate_takeover"] = _per_delta((ws_frame(OP_TEXT, takeover(j)) for j in js), deltas)
    rows["json_deflate_takeover_w10"] = _per_delta(
        (ws_frame(OP_TEXT, small(j)) for j in js), deltas
    )
    cpu = {
        "deflate_alone_us_per_message": _cpu_us(deflate_alone, js),
        "deflate_takeover_us_per_message_per_connection": _cpu_us(Takeover(), js),
        "deflate_takeover_w10_us_per_message_per_connection": _cpu_us(
            Takeover(wbits=10, mem_level=1), js
        ),
        "json_batch_45_deflate_alone_us_per_delta": round(
            _cpu_us(deflate_alone, [json_batch(js[i : i + 45]) for i in range(0, 4500, 45)]) / 45,
            2,
        ),
    }
    return {
        "deltas": deltas,
        "bytes_per_delta": rows,
        "cpu": cpu,
        "zlib_state_kib_per_connection": {
            "wbits15_mem8": zlib_state_bytes(15, 8) // 1024,
            "wbits10_mem1": zlib_state_bytes(10, 1) // 1024,
        },
    }


def table(result: dict[str, Any]) -> str:
    json_size = result["bytes_per_delta"]["json"]
    lines = ["| encoding | bytes per delta | x JSON |", "|---|---:|---:|"]
    for name, size in result["bytes_per_delta"].items():
        lines.append(f"| {name} | {size:.1f} | {size / json_size:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bytes per delta, per encoding")
    parser.add_argument("--deltas", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = measure(args.deltas)
    print(table(result))
    print(json.dumps({k: result[k] for k in ("cpu", "zlib_state_kib_per_connection")}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
