"""Issue 12, item 2 and the per-connection quotas: WebSocket commands that nest too deep,
come too fast, or resume too many markets get their documented ``error`` (and, past the
limits, close code), and the connection keeps answering."""

from __future__ import annotations

import json
from typing import Any

import pytest
import websockets
from hypothesis import given
from hypothesis import strategies as st

import protocol
from protocol import CloseCode, ErrorCode, ProtocolError
from protocol.codec import COMMAND_TYPES
from tests.component.stack import (
    T0,
    event,
    match_result,
    price_walk,
    running_stack,
    ws_client,
)
from tests.security.conftest import WIRE_FUZZ, ThreadedServer, guarded
from tests.security.session_helpers import measure
from tests.security.wire import is_utf8

M1 = "fb-1:1x2"
DEEP = b'{"type":"ping","id":1,"x":' + b"[" * 10_000 + b"]" * 10_000 + b"}"


async def test_deeply_nested_frame_gets_an_error_and_the_connection_lives() -> None:
    """Was: RecursionError, no answer, and with 64+ commands queued behind it the
    connection wedged for good."""
    async with running_stack(command_burst=100) as stack, ws_client(stack) as client:
        await client.send(DEEP)
        error = await client.recv()
        assert isinstance(error, protocol.Error)
        assert error.code == ErrorCode.TOO_DEEP
        for i in range(70):  # More than the 64 commands queued per connection.
            await client.send(DEEP if i % 2 else {"type": "ping", "id": i})
        answers = [await client.recv() for _ in range(70)]
        assert [a.id for a in answers if isinstance(a, protocol.Ack)] == list(range(0, 70, 2))
        assert {a.code for a in answers if isinstance(a, protocol.Error)} == {"too_deep"}


async def test_commands_past_the_rate_get_rate_limited_then_4103() -> None:
    quotas = {"command_rate": 1.0, "command_burst": 3, "rate_limit_close_after": 5}
    async with running_stack(**quotas) as stack, ws_client(stack) as client:
        for i in range(3):
            await client.send({"type": "ping", "id": i})
        for _ in range(3):
            assert isinstance(await client.recv(), protocol.Ack)
        await client.send({"type": "ping", "id": 99})
        refused = await client.recv()
        assert isinstance(refused, protocol.Error)
        assert refused.code == ErrorCode.RATE_LIMITED
        for _ in range(4):
            await client.send({"type": "ping"})
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await client.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == CloseCode.RATE_LIMITED


async def test_resume_of_more_markets_than_allowed_is_invalid() -> None:
    async with running_stack(max_resume_markets=3) as stack:
        await stack.feed.send(event(), match_result())
        async with ws_client(stack) as client:
            positions = [{"market_id": f"m{i}", "epoch": "e", "seq": 1} for i in range(4)]
            await client.send({"type": "resume", "positions": positions, "id": "r"})
            error = await client.recv()
            assert isinstance(error, protocol.Error)
            assert (error.code, error.id) == ("invalid", "r")
            await client.send({"type": "resume", "positions": positions[:1], "id": "ok"})
            ack = await client.recv()
            assert ack == protocol.Ack(command="resume", id="ok")


async def test_names_past_the_length_limit_are_invalid_on_the_wire() -> None:
    async with running_stack() as stack, ws_client(stack) as client:
        await client.send({"type": "subscribe", "markets": ["m" * 300], "id": 5})
        error = await client.recv()
        assert isinstance(error, protocol.Error)
        assert (error.code, error.id) == ("invalid", 5)


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=40,
)


def _frames() -> st.SearchStrategy[bytes]:
    nested = st.integers(1, 20_000).map(lambda n: b"[" * n + b"]" * n)
    command = st.fixed_dictionaries(
        {"type": st.sampled_from(sorted(COMMAND_TYPES))},
        optional={
            "id": _values,
            "markets": st.lists(st.text(max_size=300), max_size=8),
            "positions": _values,
            "token": st.text(max_size=40),
            "conflate_ms": st.integers(),
        },
    ).map(lambda c: json.dumps(c).encode())
    return st.one_of(st.binary(max_size=512), nested, command, _values.map(_dump))


def _dump(value: Any) -> bytes:
    return json.dumps(value).encode()


def _refusal(data: bytes) -> str | None:
    try:
        protocol.decode_command(data)
    except ProtocolError as exc:
        return exc.code
    return None


@WIRE_FUZZ
@given(_frames())
def test_fuzz_command_decoder(server: ThreadedServer, data: bytes) -> None:
    """Any frame: a command, or a ProtocolError with a documented code, fast and small in
    the decoder; on the wire (text when it is UTF-8, else binary), the same refusal as an
    ``error`` frame, or the command's answer, while the neighbour's stream goes on."""
    with measure() as cost:
        code = _refusal(data)
    assert code in {None, "bad_json", "unknown_type", "invalid", "too_deep"}
    assert cost.cpu_seconds < 0.05
    with guarded(server, "command decoder (WebSocket)"):
        answer = server.command(data.decode() if is_utf8(data) else data)
    if code is not None:
        assert isinstance(answer, protocol.Error), answer
        assert answer.code == code
    elif isinstance(answer, protocol.Error):
        assert answer.code in set(ErrorCode), answer
    else:
        assert isinstance(answer, protocol.Ack), answer


async def test_a_neighbour_keeps_a_contiguous_stream_while_a_client_sends_garbage() -> None:
    async with running_stack(command_burst=100) as stack:
        await stack.feed.send(event(), match_result())
        async with ws_client(stack) as good, ws_client(stack) as bad:
            await good.send({"type": "subscribe", "markets": [M1]})
            await good.recv()
            await good.until_seq({M1: 1})
            frames = [DEEP, b"\xff\xfe", b"{" * 5_000, b'{"type":"resume","positions":7}'] * 10
            for frame in frames:
                await bad.send(frame)
            await stack.feed.send(*price_walk(M1, 5, T0 + 1))
            await good.until_seq({M1: 6})
            assert good.books.seqs[M1] == list(range(1, 7))
            answers = [await bad.recv() for _ in frames]
            assert all(isinstance(a, protocol.Error) for a in answers)
