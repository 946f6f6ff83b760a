"""The demo page (``GET /``) against the protocol, without a browser.

The page is plain JavaScript that nothing compiles against ``protocol.types``; these tests
read its source so that the page and the server's protocol cannot drift apart silently:
the WebSocket path, the commands it sends (their types and fields), the server message
types it handles, and a round trip of its lobby subscription and resume through a real
server.
"""

from __future__ import annotations

import asyncio
import json
import re
import typing
from pathlib import Path

import httpx
import msgspec
import pytest

import protocol
from tests.component.stack import T0, event, match_result, odds, running_stack, ws_client

PAGE = Path(__file__).parents[2] / "server" / "static" / "index.html"


def server_tags() -> set[str]:
    return {cls.__struct_config__.tag for cls in typing.get_args(protocol.ServerMessage)}


def command_fields() -> dict[str, set[str]]:
    return {
        cls.__struct_config__.tag: {"type", *(f.encode_name for f in msgspec.structs.fields(cls))}
        for cls in typing.get_args(protocol.ClientCommand)
    }


def script(html: str) -> str:
    blocks = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(blocks) == 1, "the page keeps its code in one inline <script>"
    return str(blocks[0])


def js_list(js: str, name: str) -> list[str]:
    match = re.search(rf"const {name} = (\[[^\]]*\]);", js)
    assert match, f"const {name} = [...] not found in the page"
    value: list[str] = json.loads(match.group(1))
    return value


def object_literals(js: str, kind: str) -> list[set[str]]:
    """Keys of every ``{ type: "<kind>", key: ..., ... }`` literal in the code."""
    found = []
    for match in re.finditer(rf'\{{\s*type:\s*"{kind}",([^{{}}]*)\}}', js):
        found.append({"type", *re.findall(r"(\w+):", match.group(1))})
    return found


@pytest.fixture(scope="module")
def page() -> str:
    return PAGE.read_text(encoding="utf-8")


async def test_index_serves_the_page_as_html(page: str) -> None:
    async with running_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        response = await http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == page
    js = script(response.text)
    assert re.search(r'const WS_PATH = "/ws";', js), "the page must connect to /ws"
    assert "location.host + WS_PATH" in js, "same host as the page"
    assert f'const SUBPROTOCOL = "{protocol.SUBPROTOCOL_JSON}";' in js
    assert "new WebSocket(wsUrl(), [SUBPROTOCOL])" in js
    lobbies = js_list(js, "LOBBIES")
    assert lobbies == ["football", "tennis"]
    assert re.search(r'\{\s*type:\s*"subscribe",\s*lobbies:\s*LOBBIES', js), (
        "the page subscribes to its lobbies on connect"
    )


def test_page_handles_exactly_the_server_message_types(page: str) -> None:
    js = script(page)
    handled = re.findall(r'case "([a-z_]+)":', js)
    assert len(handled) == len(set(handled))
    assert set(handled) == server_tags(), "dispatch() must handle every server message type"
    assert set(js_list(js, "SERVER_TYPES")) == server_tags()


def test_commands_the_page_sends_match_the_protocol(page: str) -> None:
    js = script(page)
    fields = command_fields()
    sent = set(re.findall(r'\{\s*type:\s*"([a-z_]+)"', js))
    assert sent, "no commands found"
    assert sent <= set(fields), f"unknown command types: {sent - set(fields)}"
    assert {"subscribe", "unsubscribe", "resume"} <= sent
    for kind in sent:
        for keys in object_literals(js, kind):
            assert keys <= fields[kind], f"{kind} sent with unknown fields {keys - fields[kind]}"
    position = {f.encode_name for f in msgspec.structs.fields(protocol.Position)}
    literals = re.findall(r"\{\s*(market_id:[^{}]*)\}", js)
    assert literals, "the page builds resume positions"
    for literal in literals:
        assert set(re.findall(r"(\w+):", literal)) == position


def test_page_is_self_contained(page: str) -> None:
    assert "http://" not in page
    assert "https://" not in page
    assert not re.search(r'(?:src|href)\s*=\s*"(?!data:|#)', page), "no external resources"
    assert "@import" not in page


async def test_page_subscription_and_resume_round_trip(page: str) -> None:
    """The commands as the page builds them are accepted and answered as it expects."""
    lobbies = js_list(script(page), "LOBBIES")
    subprotocols = [protocol.SUBPROTOCOL_JSON]
    fb, tn = "fb-1:1x2", "tn-1:1x2"
    async with running_stack() as stack:
        await stack.feed.send(
            event(),
            match_result(),
            event("tn-1", sport="tennis"),
            match_result("tn-1", sport="tennis"),
        )
        async with ws_client(stack, subprotocols=subprotocols) as client:
            await client.send({"type": "subscribe", "lobbies": lobbies, "id": 1})
            ack = await client.until(lambda m: isinstance(m, protocol.Ack))
            assert isinstance(ack, protocol.Ack)
            assert ack.id == 1
            assert list(ack.lobbies) == lobbies
            await client.until_seq({fb: 1, tn: 1})
            assert {"fb-1", "tn-1"} <= set(client.books.events)
            held = client.books.markets[fb]

        await stack.feed.send(odds(fb, T0 + 1, home="2.00"), odds(fb, T0 + 2, home="1.95"))
        async with ws_client(stack, subprotocols=subprotocols) as client:
            position = {"market_id": fb, "epoch": held.epoch, "seq": held.seq}
            await client.send(
                {"type": "resume", "positions": [position], "lobbies": lobbies, "id": 2}
            )
            # The page's rules: a snapshot replaces the book; a delta applies only at
            # seq == last + 1 in the same epoch. The page resumes from what it holds, and
            # the server continues it with exactly the missed deltas.
            books: dict[str, protocol.Snapshot] = {fb: held}
            acked: protocol.Ack | None = None
            async with asyncio.timeout(10):
                while acked is None or books.get(fb) is None or books[fb].seq < 3:
                    message = protocol.decode_server(await client.conn.recv())
                    match message:
                        case protocol.Snapshot():
                            books[message.market_id] = message
                        case protocol.Delta():
                            book = books[message.market_id]
                            books[message.market_id] = protocol.apply(book, message)
                        case protocol.Ack(id=2):
                            acked = message
            assert list(acked.markets) == [fb]
            assert books[fb] == stack.feed.book(fb)
            assert books[tn].seq == 1
