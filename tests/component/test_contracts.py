"""The third-party API the edge relies on, exercised exactly (pinned with upper bounds in
pyproject.toml): a release that changes any of it fails here before it fails a client.

* ``h11`` (server/listener.py): ``Connection(SERVER, max_incomplete_event_size=)``,
  ``receive_data``, ``next_event`` (``Request``/``Data``/``EndOfMessage``/
  ``ConnectionClosed``, ``NEED_DATA``, ``PAUSED``), ``send``, ``our_state``/
  ``their_state``, ``start_next_cycle``, ``trailing_data``, ``Headers.raw_items``,
  ``RemoteProtocolError.error_status_hint``, ``LocalProtocolError``.
* ``websockets`` sans-I/O (server/ws.py): ``ServerProtocol(subprotocols=,
  select_subprotocol=, max_size=)``, ``receive_data``/``receive_eof``,
  ``events_received``, ``accept``/``reject``/``send_response``, ``handshake_exc``
  (``InvalidHeader.name``), ``data_to_send``, ``send_close``, ``fail``, ``state``, frames
  with ``opcode``/``fin``/``data`` (fragments are not joined by the protocol).
"""

from __future__ import annotations

import h11
import pytest
from websockets.exceptions import InvalidHeader
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from tests.security.wire import client_frame, ws_handshake


def test_h11_reads_a_keep_alive_cycle_and_bounds_an_incomplete_head() -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64)
    conn.receive_data(b"GET /a?b HTTP/1.1\r\nHost: x\r\nX-Case: V\r\n\r\nGET /next")
    request = conn.next_event()
    assert isinstance(request, h11.Request)
    assert (request.method, request.target, request.http_version) == (b"GET", b"/a?b", b"1.1")
    assert list(request.headers.raw_items()) == [(b"Host", b"x"), (b"X-Case", b"V")]
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    assert conn.next_event() is h11.PAUSED
    assert conn.trailing_data == (b"GET /next", False)
    headers = [(b"content-length", b"2")]
    out = conn.send(h11.Response(status_code=200, headers=headers))
    assert out is not None
    assert out.startswith(b"HTTP/1.1 200 ")
    assert b"server" not in out.lower()
    assert conn.send(h11.Data(data=b"ok")) == b"ok"
    conn.send(h11.EndOfMessage())
    assert (conn.our_state, conn.their_state) == (h11.DONE, h11.DONE)
    conn.start_next_cycle()
    assert conn.next_event() is h11.NEED_DATA
    conn.receive_data(b"x" * 100)
    with pytest.raises(h11.RemoteProtocolError) as too_long:
        conn.next_event()
    assert too_long.value.error_status_hint == 431


def test_h11_streams_chunked_answers_and_reports_a_closed_peer() -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    assert isinstance(conn.next_event(), h11.Request)
    data = conn.next_event()
    assert isinstance(data, h11.Data)
    assert bytes(data.data) == b"abc"
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    head = conn.send(h11.Response(status_code=200, headers=[]))
    assert head is not None
    assert b"transfer-encoding: chunked" in head.lower()
    with pytest.raises(h11.LocalProtocolError):
        conn.send(h11.Response(status_code=200, headers=[]))
    closed = h11.Connection(h11.SERVER)
    closed.receive_data(b"")
    assert isinstance(closed.next_event(), h11.ConnectionClosed)


def test_websockets_sans_io_handshake_frames_and_failures() -> None:
    ws = ServerProtocol(
        subprotocols=[Subprotocol("oddstream.v1.json")],
        select_subprotocol=lambda protocol, offered: next(iter(offered), None),
        max_size=1024,
    )
    ws.receive_data(ws_handshake(extra="Sec-WebSocket-Protocol: oddstream.v1.json\r\n"))
    (request,) = ws.events_received()
    assert isinstance(request, Request)
    response = ws.accept(request)
    assert response.status_code == 101
    assert response.headers["Sec-WebSocket-Protocol"] == "oddstream.v1.json"
    ws.send_response(response)
    assert ws.state is State.OPEN
    assert ws.data_to_send()[0].startswith(b"HTTP/1.1 101 ")
    ws.receive_data(client_frame(b"ab", fin=False) + client_frame(b"c", Opcode.CONT.value))
    frames = ws.events_received()
    assert [(f.opcode, f.fin, bytes(f.data)) for f in frames if isinstance(f, Frame)] == [
        (Opcode.TEXT, False, b"ab"),
        (Opcode.CONT, True, b"c"),
    ], "fragments arrive as frames: the caller joins them"
    ws.fail(1007, "invalid UTF-8")
    sent = b"".join(ws.data_to_send())
    assert sent.startswith(b"\x88") and sent[2:4] == (1007).to_bytes(2, "big")


def test_websockets_refuses_a_version_and_says_which_header() -> None:
    ws = ServerProtocol()
    ws.receive_data(ws_handshake(version="8"))
    (request,) = ws.events_received()
    assert isinstance(request, Request)
    response = ws.accept(request)
    assert response.status_code == 400
    assert isinstance(ws.handshake_exc, InvalidHeader)
    assert ws.handshake_exc.name == "Sec-WebSocket-Version"
    assert "Server" not in response.headers


def test_websockets_bounds_a_message_across_its_fragments() -> None:
    ws = ServerProtocol(max_size=8)
    ws.receive_data(ws_handshake())
    (request,) = ws.events_received()
    assert isinstance(request, Request)
    ws.send_response(ws.accept(request))
    ws.data_to_send()
    ws.receive_data(client_frame(b"12345", fin=False) + client_frame(b"6789", Opcode.CONT.value))
    ws.events_received()
    sent = b"".join(ws.data_to_send())
    assert sent[2:4] == (1009).to_bytes(2, "big")


def test_websockets_closes_cleanly_on_request() -> None:
    ws = ServerProtocol()
    ws.receive_data(ws_handshake())
    (request,) = ws.events_received()
    assert isinstance(request, Request)
    ws.send_response(ws.accept(request))
    ws.data_to_send()
    ws.send_close(4000, "draining")
    assert ws.state is State.CLOSING
    assert b"".join(ws.data_to_send())[2:4] == (4000).to_bytes(2, "big")
    rejected = ServerProtocol().reject(404, "Not Found\n")
    assert rejected.status_code == 404
