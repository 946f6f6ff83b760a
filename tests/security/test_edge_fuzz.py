"""Property-based fuzzing of the edge's two readers against a running gateway: the HTTP
request-head reader and the WebSocket frame reader. Each example must get an answer (or
a close) within a deadline, only documented statuses and close codes, and the neighbour
client's book must stay exact and current throughout, and the process's memory within a
fixed budget (``tests/security/conftest.py``: ``guarded``, ``WIRE_FUZZ``)."""

from __future__ import annotations

import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from tests.security.conftest import DEADLINE_S, WIRE_FUZZ, ThreadedServer, guarded
from tests.security.wire import (
    HTTP_STATUSES,
    client_frame,
    is_utf8,
    read_until_closed,
    status_of,
    ws_handshake,
)

#: Close codes the server may send a misbehaving client (docs/protocol.md).
CLOSE_CODES = {1000, 1002, 1007, 1008, 1009, 4100}

token = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=12)
line_end = st.sampled_from([b"\r\n", b"\n", b"\r", b""])
request_line = st.builds(
    lambda method, target, version, end: method + b" " + target + b" " + version + end,
    st.sampled_from([b"GET", b"HEAD", b"POST", b"OPTIONS", b"G\x00T", b""]),
    st.sampled_from([b"/healthz", b"/sse?markets=x", b"/ws", b"/v1/markets", b"*", b"/%ff"])
    | st.binary(max_size=40),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"HTTP/1", b"http/1.1"]),
    line_end,
)
header = st.builds(
    lambda name, value, end: name.encode() + b":" + value + end,
    token | st.sampled_from(["Host", "Content-Length", "Transfer-Encoding", "Upgrade"]),
    st.binary(max_size=40) | st.sampled_from([b" 5", b" chunked", b" -1", b" websocket"]),
    line_end,
)
head = st.builds(
    lambda line, headers, end, body: line + b"".join(headers) + end + body,
    request_line,
    st.lists(header, max_size=8),
    line_end,
    st.binary(max_size=64),
) | st.binary(max_size=300)


@WIRE_FUZZ
@given(data=head)
def test_any_request_head_gets_a_documented_answer_or_a_close(
    server: ThreadedServer, data: bytes
) -> None:
    with guarded(server, "HTTP request head"), server.connect() as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer, closed = read_until_closed(sock, DEADLINE_S)
    assert closed, f"no close within {DEADLINE_S}s for {data!r}"
    if answer:
        assert status_of(answer) in HTTP_STATUSES, answer[:200]
        assert b"\r\nserver:" not in answer.split(b"\r\n\r\n", 1)[0].lower()


frame = st.tuples(
    st.binary(max_size=200)
    | st.sampled_from([b'{"type":"ping"}', b'{"type":"subscribe","markets":["fb-1:1x2"]}']),
    st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA]) | st.integers(0, 15),
    st.booleans(),
    st.sampled_from([0, 0, 0, 1, 4]),
)


def close_codes(data: bytes) -> list[int]:
    """The codes of the close frames among the server's (unmasked) frames."""
    codes = []
    while len(data) >= 2:
        opcode, n = data[0] & 0xF, data[1] & 0x7F
        at = 2
        if n == 126:
            n, at = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            n, at = struct.unpack("!Q", data[2:10])[0], 10
        payload, data = data[at : at + n], data[at + n :]
        if opcode == 0x8 and len(payload) >= 2:
            codes.append(struct.unpack("!H", payload[:2])[0])
    return codes


@WIRE_FUZZ
@given(frames=st.lists(frame, min_size=1, max_size=6) | st.binary(min_size=1, max_size=200))
def test_any_websocket_frames_get_an_answer_or_a_documented_close(
    server: ThreadedServer, frames: list[tuple[bytes, int, bool, int]] | bytes
) -> None:
    allowed = set(CLOSE_CODES)
    if isinstance(frames, list):
        # A client's own close code is echoed (RFC 6455 5.5.1).
        allowed |= {int.from_bytes(p[:2], "big") for p, op, _, _ in frames if op == 0x8}
        sent = b"".join(client_frame(p, op, fin=fin, rsv=rsv) for p, op, fin, rsv in frames)
    else:
        sent = frames
    with guarded(server, "WebSocket frames"), server.connect() as sock:
        sock.sendall(ws_handshake())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            assert chunk, "closed during the handshake"
            response += chunk
        assert status_of(response) == 101
        sock.sendall(sent)
        sock.shutdown(socket.SHUT_WR)
        answer, closed = read_until_closed(sock, DEADLINE_S)
    assert closed, f"no close within {DEADLINE_S}s"
    rest = response.split(b"\r\n\r\n", 1)[1] + answer
    codes = close_codes(rest)
    assert set(codes) <= allowed, codes
    if isinstance(frames, list):
        payload, opcode, fin, rsv = frames[0]
        if opcode == 0x1 and fin and not rsv and not is_utf8(payload):
            # 1007, unless a later frame of the same packet broke the framing, which the
            # protocol reads first (1002).
            assert codes[:1] in ([1007], [1002]), "a text message that is not UTF-8: 1007"
