"""Generate the machine-readable description of the wire protocol from its msgspec types.

``python -m protocol.schema [--check] [--out docs/schema]`` (run from the repository root)
produces, in ``--out``:

* ``<type>.json``: one JSON Schema per server message and client command, named by its
  ``type`` tag (``snapshot.json``, ``subscribe.json``...);
* ``server.json`` and ``client.json``: the tagged unions a client decodes and sends;
* ``asyncapi.json``: an AsyncAPI 3.0 document for the WebSocket ``/ws`` and SSE ``/sse``
  channels, the Kafka ``deltas`` topic, and the feed topics ``markets``, ``odds`` and
  ``results``, whose payloads it references in ``feed.json``.

``feed.json`` is produced by ``python -m feeds.schema``: the feed messages live in the
``feeds`` package, which ``protocol`` must not import. Both commands share this module's
:func:`run`, so they write and check alike.

Output is deterministic (sorted keys, two-space indent, trailing newline), so the committed
files can be compared byte for byte. ``--check`` writes nothing and exits 1, naming every
stale file, when the committed files differ from what the types produce.

The schemas use JSON Schema draft-07: it is the dialect AsyncAPI schema objects extend and
the one front-end code generators handle best. msgspec emits draft 2020-12 tuples
(``prefixItems``), which :func:`to_draft07` rewrites.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

import msgspec

from protocol.types import Ack, ClientCommand, Delta, Error, ServerMessage, Snapshot

JsonObject = dict[str, Any]
StructType = type[msgspec.Struct]

DRAFT_07 = "http://json-schema.org/draft-07/schema#"
DEFAULT_OUT = Path("docs/schema")
ASYNCAPI_FILE = "asyncapi.json"
SERVER_FILE = "server.json"
CLIENT_FILE = "client.json"
#: Written by ``python -m feeds.schema``; referenced from the AsyncAPI document.
FEED_SCHEMA_FILE = "feed.json"
#: Feed topic -> the feed message Structs it carries (by name, as defined in feed.json).
#: ``protocol`` cannot import ``feeds.model.TOPIC_OF``; ``feeds.schema`` refuses to run
#: and tests/unit/test_schema.py fails when the two disagree.
FEED_TOPICS: Mapping[str, tuple[str, ...]] = {
    "markets": ("FeedEvent", "FeedMarket", "FeedMarketStatus"),
    "odds": ("FeedOdds",),
    "results": ("FeedResult",),
}
DELTAS_TOPIC = "deltas"
#: Heartbeat interval documented for a quiet connection (the gateway's default).
HEARTBEAT_SECONDS = 15

# Keys whose values are data (defaults, enumerations), not schemas: never rewritten.
_DATA_KEYS = frozenset({"default", "enum", "const", "examples"})


def server_types() -> tuple[StructType, ...]:
    """Every server-to-client message type, in the order of :data:`ServerMessage`."""
    return get_args(ServerMessage)


def client_types() -> tuple[StructType, ...]:
    """Every client command type, in the order of :data:`ClientCommand`."""
    return get_args(ClientCommand)


def tag_of(cls: StructType) -> str:
    """The wire tag (``type``, or ``kind`` for feed messages) of a tagged Struct."""
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{cls.__name__} is not a tagged Struct")
    return tag


def summary_of(cls: type) -> str:
    """The first paragraph of a class docstring, on one line."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    return " ".join(doc.split("\n\n", 1)[0].split())


def to_draft07(node: Any) -> Any:
    """Rewrite msgspec's schema output for draft-07: tuples become ``items`` arrays with
    ``additionalItems``, and docstring descriptions lose their source indentation."""
    if isinstance(node, list):
        return [to_draft07(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: JsonObject = {}
    for key, value in node.items():
        if key in _DATA_KEYS:
            out[key] = value
        elif key == "description" and isinstance(value, str):
            out[key] = inspect.cleandoc(value)
        else:
            out[key] = to_draft07(value)
    if "prefixItems" in out:
        rest = out.pop("items", True)
        out["items"] = out.pop("prefixItems")
        out["additionalItems"] = rest
    return out


def json_schema(
    types: Sequence[Any], *, title: str | None = None, description: str | None = None
) -> JsonObject:
    """A standalone draft-07 JSON Schema whose root is ``types[0]`` (a Struct or a union)
    and whose ``definitions`` hold every Struct it refers to."""
    roots, components = msgspec.json.schema_components(types, ref_template="#/definitions/{name}")
    document: JsonObject = {"$schema": DRAFT_07, **roots[0], "definitions": components}
    if title is not None:
        document["title"] = title
    if description is not None:
        document["description"] = description
    result: JsonObject = to_draft07(document)
    return result


def message_schemas() -> dict[str, JsonObject]:
    """File name -> JSON Schema for every message and command, and the two unions."""
    files: dict[str, JsonObject] = {}
    for cls in (*server_types(), *client_types()):
        name = f"{tag_of(cls)}.json"
        if name in files:
            raise ValueError(f"two message types share the tag of {cls.__name__}")
        files[name] = json_schema([cls])
    files[SERVER_FILE] = json_schema(
        [ServerMessage],
        title="ServerMessage",
        description="Any server-to-client message of oddstream.v1, tagged by `type`.",
    )
    files[CLIENT_FILE] = json_schema(
        [ClientCommand],
        title="ClientCommand",
        description="Any client-to-server command of oddstream.v1, tagged by `type`.",
    )
    return files


def _ref(*parts: str) -> JsonObject:
    return {"$ref": "#/" + "/".join(parts)}


def _message_object(cls: StructType, *, kafka_key: str | None = None) -> JsonObject:
    message: JsonObject = {
        "name": tag_of(cls),
        "title": cls.__name__,
        "summary": summary_of(cls),
        "contentType": "application/json",
        "payload": _ref("components", "schemas", cls.__name__),
    }
    if "id" in cls.__struct_fields__:
        message["correlationId"] = _ref("components", "correlationIds", "commandId")
    if kafka_key is not None:
        message["bindings"] = {
            "kafka": {
                "bindingVersion": "0.5.0",
                "key": {"type": "string", "description": f"The message's `{kafka_key}`."},
            }
        }
    return message


def _feed_message_object(name: str) -> JsonObject:
    return {
        "name": name,
        "title": name,
        "summary": f"`{name}` feed message, tagged by `kind`; defined in {FEED_SCHEMA_FILE}.",
        "contentType": "application/json",
        "payload": {"$ref": f"{FEED_SCHEMA_FILE}#/definitions/{name}"},
        "bindings": {
            "kafka": {
                "bindingVersion": "0.5.0",
                "key": {
                    "type": "string",
                    "description": "The message's `event_id`: an event's messages share a "
                    "partition across the co-partitioned feed topics.",
                },
            }
        },
    }


def _channel_messages(channel: str, names: Sequence[str]) -> list[JsonObject]:
    return [_ref("channels", channel, "messages", name) for name in names]


def asyncapi() -> JsonObject:
    """The AsyncAPI 3.0 document, from the point of view of an oddstream deployment
    (gateways and book processors together): it receives commands and feed messages and
    sends server messages and deltas."""
    server = server_types()
    client = client_types()
    server_tags = [tag_of(cls) for cls in server]
    client_tags = [tag_of(cls) for cls in client]
    kafka_tags = [tag_of(Snapshot), tag_of(Delta)]
    feed_names = sorted({name for names in FEED_TOPICS.values() for name in names})

    _, components = msgspec.json.schema_components(
        (*server, *client), ref_template="#/components/schemas/{name}"
    )
    messages: JsonObject = {
        tag_of(cls): _message_object(
            cls, kafka_key="market_id" if tag_of(cls) in kafka_tags else None
        )
        for cls in (*server, *client)
    }
    messages.update({name: _feed_message_object(name) for name in feed_names})

    def message_refs(names: Sequence[str]) -> JsonObject:
        return {name: _ref("components", "messages", name) for name in names}

    channels: JsonObject = {
        "ws": {
            "address": "/ws",
            "title": "WebSocket",
            "description": (
                "One WebSocket per client. Subprotocol `oddstream.v1.json` (the default): one "
                "JSON message per text frame; `oddstream.v1.msgpack`: server messages as "
                "MessagePack in binary frames (commands stay JSON). The client sends commands; "
                "the server answers each with `ack` or `error` (echoing its `id`), then streams "
                "`snapshot`, `delta` and `event` messages, and a `heartbeat` after "
                f"{HEARTBEAT_SECONDS} s of silence."
            ),
            "servers": [_ref("servers", "gateway")],
            "messages": message_refs([*server_tags, *client_tags]),
        },
        "sse": {
            "address": "/sse",
            "title": "Server-Sent Events",
            "description": (
                "The same JSON messages as the WebSocket, one per SSE event: `event:` is the "
                "message `type`, `data:` the JSON, and `id:` (on market messages) the resume "
                "token. Subscriptions are in the query string (`markets`, `events`, `lobbies`, "
                "comma-separated), run as a `subscribe` (and a `resume` for `Last-Event-ID`) "
                "whose `ack` opens the stream."
            ),
            "servers": [_ref("servers", "gateway-http")],
            "messages": message_refs(server_tags),
        },
        DELTAS_TOPIC: {
            "address": DELTAS_TOPIC,
            "title": "Normalized deltas",
            "description": (
                "Every market's `snapshot` (at creation, seq 1) and `delta` messages, as JSON, "
                "keyed by `market_id`, so one partition carries a market's whole sequence in "
                "order."
            ),
            "servers": [_ref("servers", "kafka")],
            "messages": message_refs(kafka_tags),
            "bindings": {"kafka": {"bindingVersion": "0.5.0", "topic": DELTAS_TOPIC}},
        },
    }
    for topic, names in FEED_TOPICS.items():
        channels[topic] = {
            "address": topic,
            "title": f"Feed topic `{topic}`",
            "description": (
                f"Neutral feed messages ({', '.join(names)}) from the feed adapters, keyed "
                "by `event_id`; JSON tagged by `kind`."
            ),
            "servers": [_ref("servers", "kafka")],
            "messages": message_refs(names),
            "bindings": {"kafka": {"bindingVersion": "0.5.0", "topic": topic}},
        }

    sse_query = {
        "type": "object",
        "properties": {
            key: {"type": "string", "description": f"Comma-separated {what}."}
            for key, what in (
                ("markets", "market ids"),
                ("events", "event ids"),
                ("lobbies", "sports whose main markets to follow"),
            )
        },
    }
    operations: JsonObject = {
        "receiveCommand": {
            "action": "receive",
            "title": "Client command",
            "channel": _ref("channels", "ws"),
            "messages": _channel_messages("ws", client_tags),
            "reply": {
                "channel": _ref("channels", "ws"),
                "messages": _channel_messages("ws", [tag_of(Ack), tag_of(Error)]),
            },
        },
        "sendWebSocketMessage": {
            "action": "send",
            "title": "Server message on the WebSocket",
            "channel": _ref("channels", "ws"),
            "messages": _channel_messages("ws", server_tags),
        },
        "sendSseEvent": {
            "action": "send",
            "title": "Server message as an SSE event",
            "channel": _ref("channels", "sse"),
            "messages": _channel_messages("sse", server_tags),
            "bindings": {"http": {"bindingVersion": "0.3.0", "method": "GET", "query": sse_query}},
        },
        "sendDelta": {
            "action": "send",
            "title": "Normalized snapshot or delta for downstream services",
            "channel": _ref("channels", DELTAS_TOPIC),
            "messages": _channel_messages(DELTAS_TOPIC, kafka_tags),
        },
    }
    for topic, names in FEED_TOPICS.items():
        operations[f"receiveFeed{topic.capitalize()}"] = {
            "action": "receive",
            "title": f"Feed messages from `{topic}` (book processors)",
            "channel": _ref("channels", topic),
            "messages": _channel_messages(topic, names),
        }

    document: JsonObject = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "oddstream",
            "version": "v1",
            "description": (
                "Real-time odds: feed topics in, WebSocket, SSE and Kafka out. Described from "
                "the deployment's side: `receive` is what oddstream consumes, `send` what it "
                "emits. Prose: docs/protocol.md."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "gateway": {
                "host": "{host}",
                "protocol": "ws",
                "description": "Any gateway; no stickiness (resume makes any gateway good).",
                "variables": {"host": {"default": "localhost:8000"}},
            },
            "gateway-http": {
                "host": "{host}",
                "protocol": "http",
                "description": "The same gateway, for SSE.",
                "variables": {"host": {"default": "localhost:8000"}},
            },
            "kafka": {
                "host": "{bootstrap}",
                "protocol": "kafka",
                "description": "The Kafka cluster the feed adapters and book processors use.",
                "variables": {"bootstrap": {"default": "localhost:9092"}},
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": components,
            "messages": messages,
            "correlationIds": {
                "commandId": {
                    "description": "A command's optional `id`, echoed in its `ack` or `error`.",
                    "location": "$message.payload#/id",
                }
            },
        },
    }
    result: JsonObject = to_draft07(document)
    return result


def render(document: Any) -> str:
    """Deterministic JSON text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """File name -> content of every file this module owns in the schema directory."""
    files = {name: render(doc) for name, doc in message_schemas().items()}
    files[ASYNCAPI_FILE] = render(asyncapi())
    return dict(sorted(files.items()))


def stale_files(
    files: Mapping[str, str], out: Path, *, others: Collection[str] | None = None
) -> list[str]:
    """Describe each file under ``out`` that differs from ``files`` (one line each).

    With ``others`` (the names other generators own there), any other ``*.json`` in
    ``out`` is reported too: it was generated for a type that no longer exists.
    """
    problems: list[str] = []
    for name, content in files.items():
        path = out / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != content:
            problems.append(f"{path}: differs from the types")
    if others is not None:
        known = set(files) | set(others)
        problems.extend(
            f"{path}: not generated by any type any more"
            for path in sorted(out.glob("*.json"))
            if path.name not in known
        )
    return problems


def run(
    argv: Sequence[str] | None,
    *,
    prog: str,
    files: Mapping[str, str],
    others: Collection[str] | None = None,
    out: Path = DEFAULT_OUT,
) -> int:
    """The command line shared by ``protocol.schema``, ``feeds.schema`` and
    ``server.openapi`` (whose directory ``out`` is another); returns the exit status.
    Writing removes leftovers (see :func:`stale_files`) when ``others`` is given."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Generate or check the machine-readable descriptions."
    )
    parser.add_argument("--out", type=Path, default=out, help="directory (default: %(default)s)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the files in --out are not what the types generate",
    )
    args = parser.parse_args(argv)
    out = args.out
    problems = stale_files(files, out, others=others)
    if args.check:
        if problems:
            print(
                f"{out} is stale; regenerate it with `{prog} --out {out}`:",
                *(f"  {line}" for line in problems),
                sep="\n",
                file=sys.stderr,
            )
            return 1
        print(f"{out}: current ({len(files)} generated)")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = out / name
        if not path.is_file() or path.read_text(encoding="utf-8") != content:
            path.write_text(content, encoding="utf-8")
    if others is not None:
        known = set(files) | set(others)
        for path in out.glob("*.json"):
            if path.name not in known:
                path.unlink()
    if problems:
        print(f"{out}: updated", *(f"  {line}" for line in problems), sep="\n")
    else:
        print(f"{out}: current ({len(files)} generated)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv, prog="python -m protocol.schema", files=generate(), others=[FEED_SCHEMA_FILE])


if __name__ == "__main__":
    sys.exit(main())
