"""The wire protocol: codecs, command decoding errors, ``apply``, error and close codes."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, get_args

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol
from protocol import (
    MESSAGE_TOO_BIG,
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_MSGPACK,
    UNSET,
    Ack,
    ApplyError,
    ClientCommand,
    Clock,
    CloseCode,
    Delta,
    Error,
    ErrorCode,
    EventState,
    Heartbeat,
    Ping,
    Position,
    ProtocolError,
    Reconnect,
    Resume,
    Selection,
    SelectionChange,
    ServerMessage,
    Snapshot,
    Subscribe,
    Unsubscribe,
    apply,
    apply_selection_changes,
    as_reset,
    decode_command,
    decode_server,
    decode_server_msgpack,
    encode,
    encode_msgpack,
)
from protocol.codec import COMMAND_TYPES, MAX_DEPTH, too_deep
from protocol.types import MAX_NAME_CHARS, MAX_NAMES, MAX_SEQ, MAX_TOKEN_CHARS, Auth, Refresh

MARKET = "fb-0001:1x2"
EVENT = "fb-0001"
TS = 1_767_366_000_000  # 2026-01-02T15:00:00Z in epoch milliseconds

HOME = Selection("home", "Arsenal", Decimal("2.10"))
DRAW = Selection("draw", "Draw", Decimal("3.40"))
AWAY = Selection("away", "Chelsea", Decimal("3.60"))

SNAPSHOT = Snapshot(
    market_id=MARKET,
    event_id=EVENT,
    seq=7,
    epoch="p1-0001",
    ts=TS,
    sport="football",
    kind="1x2",
    name="Match result",
    status="open",
    selections=(HOME, DRAW, AWAY),
    main=True,
)


#: An exchange market: every optional field of a selection set somewhere.
EXCHANGE = Snapshot(
    market_id="1.197931750",
    event_id="31389771",
    seq=12,
    epoch="p1-0002",
    ts=TS,
    sport="greyhounds",
    kind="win",
    name="OR 280m",
    status="open",
    selections=(
        Selection(
            "44331354",
            "1. Paradise Mission",
            Decimal("8.8"),
            back=((Decimal("8.8"), Decimal("18.62")), (Decimal("8.6"), Decimal("4.83"))),
            lay=((Decimal("9.4"), Decimal("10.39")),),
            ltp=Decimal("9.2"),
            volume=Decimal("130.5"),
            bsp=Decimal("85.0"),
        ),
        Selection(
            "37947503",
            "2. Sandwood Jet",
            None,
            "removed",
            adjustment=Decimal("22.12"),
            removed_at=TS - 60_000,
        ),
        Selection("36276560", "3. Kirabilly Kathy", None, "winner", dead_heat=Decimal("0.5")),
    ),
    main=True,
    volume=Decimal("25102.51"),
)


def delta(seq: int = 8, **changes: Any) -> Delta:
    """A delta on SNAPSHOT's market and epoch."""
    fields: dict[str, Any] = {
        "market_id": MARKET,
        "event_id": EVENT,
        "seq": seq,
        "epoch": SNAPSHOT.epoch,
        "ts": TS + 1_000,
    }
    fields.update(changes)
    return Delta(**fields)


SERVER_MESSAGES: list[ServerMessage] = [
    SNAPSHOT,
    msgspec.structs.replace(
        SNAPSHOT,
        status="suspended",
        reason="goal",
        reset=True,
        main=False,
        selections=(HOME, Selection("x", "Other", None, "removed")),
    ),
    Snapshot(MARKET, EVENT, 1, "e", 0, "football", "1x2", "Match result", "settled", ()),
    delta(),
    delta(status="suspended", reason="var"),
    delta(status="open", reason=None),
    delta(selections=(SelectionChange("home", price=Decimal("2.05")),)),
    delta(selections=(SelectionChange("away", price=None, status="removed"),)),
    delta(selections=(SelectionChange("new", name="Any other", price=Decimal("1000")),)),
    EXCHANGE,
    delta(
        volume=Decimal("25102.51"),
        selections=(
            SelectionChange(
                "44331354",
                price=Decimal("8.8"),
                back=((Decimal("8.8"), Decimal("18.62")),),
                lay=(),
                ltp=None,
                volume=Decimal("12"),
            ),
            SelectionChange("37947503", status="winner", dead_heat=Decimal("0.5")),
            SelectionChange("36276560", void_factor=Decimal("0.5"), removed_at=None),
        ),
    ),
    EventState(
        event_id=EVENT,
        seq=3,
        ts=TS,
        sport="football",
        competition="Premier League",
        name="Arsenal v Chelsea",
        home="Arsenal",
        away="Chelsea",
        start_time=TS - 600_000,
        phase="live",
        score=(1, 0),
        clock=Clock("1H", 1_234, running=True),
    ),
    EventState(EVENT, 1, TS, "football", "PL", "A v B", "A", "B", TS, "pre"),
    Heartbeat(ts=TS),
    Ack("subscribe", id="s1", markets=(MARKET,), events=(EVENT,), lobbies=("football",)),
    Ack("ping"),
    Ack("ping", id=0),
    Error("unknown_market", "no market fb-9999:1x2", id=42),
    Error("bad_json", "not valid JSON"),
    Reconnect("draining", after_ms=250, positions=(Position(MARKET, "p1-0001", 7),)),
    Reconnect("draining"),
]

CLIENT_COMMANDS: list[ClientCommand] = [
    Subscribe(markets=(MARKET,), id="s1"),
    Subscribe(events=(EVENT,), lobbies=("football", "tennis"), id=7),
    Subscribe(),
    Unsubscribe(markets=(MARKET,), events=(EVENT,), lobbies=("football",), id="u1"),
    Unsubscribe(),
    Resume(positions=(Position(MARKET, "p1-0001", 7),), events=(EVENT,), id="r1"),
    Resume(positions=()),
    Ping(id="p1"),
    Ping(id=-1),
    Ping(),
    Auth(token="header.claims.signature", id="a1"),
    Refresh(token="header.claims.signature"),
]


def _name(value: object) -> str:
    return type(value).__name__


def test_tables_cover_every_message_type() -> None:
    assert {type(m) for m in SERVER_MESSAGES} == set(get_args(ServerMessage))
    assert {type(c) for c in CLIENT_COMMANDS} == set(get_args(ClientCommand))


def test_command_types_match_the_union() -> None:
    tags = {cls.__struct_config__.tag for cls in get_args(ClientCommand)}
    assert tags == COMMAND_TYPES


def test_exports_resolve() -> None:
    for name in protocol.__all__:
        assert getattr(protocol, name) is not None, name


# ---------------------------------------------------------------------------
# Codecs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("message", SERVER_MESSAGES, ids=_name)
def test_server_message_json_round_trip(message: ServerMessage) -> None:
    data = encode(message)
    decoded = decode_server(data)
    assert decoded == message
    assert type(decoded) is type(message)
    assert encode(decoded) == data
    assert decode_server(data.decode()) == message


@pytest.mark.parametrize("message", SERVER_MESSAGES, ids=_name)
def test_server_message_msgpack_round_trip(message: ServerMessage) -> None:
    data = encode_msgpack(message)
    decoded = decode_server_msgpack(data)
    assert decoded == message
    assert encode_msgpack(decoded) == data


@pytest.mark.parametrize("message", [*SERVER_MESSAGES, *CLIENT_COMMANDS], ids=_name)
def test_every_message_starts_with_its_type(message: msgspec.Struct) -> None:
    # channels.frame builds the SSE `event:` line from this prefix without parsing.
    tag = type(message).__struct_config__.tag
    assert encode(message).startswith(b'{"type":"%s"' % str(tag).encode())


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=_name)
def test_client_command_round_trip(command: ClientCommand) -> None:
    data = encode(command)
    assert decode_command(data) == command
    assert decode_command(data.decode()) == command


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            delta(selections=(SelectionChange("home", price=Decimal("2.05")),)),
            b'{"type":"delta","market_id":"fb-0001:1x2","event_id":"fb-0001","seq":8,'
            b'"epoch":"p1-0001","ts":1767366001000,'
            b'"selections":[{"selection_id":"home","price":"2.05"}]}',
        ),
        (
            delta(status="open", reason=None),
            b'{"type":"delta","market_id":"fb-0001:1x2","event_id":"fb-0001","seq":8,'
            b'"epoch":"p1-0001","ts":1767366001000,"status":"open","reason":null}',
        ),
        (
            Snapshot(MARKET, EVENT, 1, "e", 5, "football", "1x2", "1X2", "open", (HOME,)),
            b'{"type":"snapshot","market_id":"fb-0001:1x2","event_id":"fb-0001","seq":1,'
            b'"epoch":"e","ts":5,"sport":"football","kind":"1x2","name":"1X2","status":"open",'
            b'"selections":[{"selection_id":"home","name":"Arsenal","price":"2.10"}]}',
        ),
        (Heartbeat(ts=5), b'{"type":"heartbeat","ts":5}'),
        (Ack("ping", id="p1"), b'{"type":"ack","command":"ping","id":"p1"}'),
        (Error("invalid", "bad"), b'{"type":"error","code":"invalid","message":"bad"}'),
        (
            delta(
                volume=Decimal("10.5"),
                selections=(
                    SelectionChange(
                        "h",
                        price=Decimal("2.10"),
                        back=((Decimal("2.10"), Decimal("100.00")),),
                        lay=(),
                        ltp=None,
                    ),
                ),
            ),
            b'{"type":"delta","market_id":"fb-0001:1x2","event_id":"fb-0001","seq":8,'
            b'"epoch":"p1-0001","ts":1767366001000,"selections":[{"selection_id":"h",'
            b'"price":"2.10","back":[["2.10","100.00"]],"lay":[],"ltp":null}],"volume":"10.5"}',
        ),
    ],
    ids=["delta-price", "delta-reopen", "snapshot", "heartbeat", "ack", "error", "delta-exchange"],
)
def test_exact_wire_form(message: ServerMessage, expected: bytes) -> None:
    """Defaults are omitted, absent delta fields mean 'unchanged', null means 'cleared'."""
    assert encode(message) == expected


def test_absent_delta_fields_decode_as_unset() -> None:
    decoded = decode_server(
        b'{"type":"delta","market_id":"m","event_id":"e","seq":2,'
        b'"epoch":"x","ts":1,"selections":[{"selection_id":"a"}]}'
    )
    assert isinstance(decoded, Delta)
    assert decoded.status is UNSET
    assert decoded.reason is UNSET
    assert decoded.selections == (SelectionChange("a"),)
    assert decoded.selections[0].price is UNSET


@pytest.mark.parametrize(
    "price", ["1.01", "1000", "2.10", "2.1", "1.5", "151", "3.333333333333333333", "1E+3"]
)
def test_prices_travel_as_strings_and_round_trip_exactly(price: str) -> None:
    message = msgspec.structs.replace(SNAPSHOT, selections=(Selection("h", "H", Decimal(price)),))
    data = encode(message)
    assert json.loads(data)["selections"][0]["price"] == price
    for decoded in (decode_server(data), decode_server_msgpack(encode_msgpack(message))):
        assert isinstance(decoded, Snapshot)
        assert str(decoded.selections[0].price) == price
    change = delta(selections=(SelectionChange("h", price=Decimal(price)),))
    decoded_delta = decode_server(encode(change))
    assert isinstance(decoded_delta, Delta)
    assert str(decoded_delta.selections[0].price) == price


def test_decode_server_rejects_commands_and_garbage() -> None:
    for data in (b'{"type":"subscribe"}', b"{}", b"[]", b"nope", b'{"type":"delta"}'):
        with pytest.raises(msgspec.DecodeError):
            decode_server(data)


# ---------------------------------------------------------------------------
# decode_command errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code", "command_id"),
    [
        # Not JSON, or JSON but not an object.
        (b"not json", ErrorCode.BAD_JSON, None),
        (b"", ErrorCode.BAD_JSON, None),
        (b"\xff\xfe", ErrorCode.BAD_JSON, None),
        (b'{"type":"ping","id":"p"', ErrorCode.BAD_JSON, None),
        (b'{"type":"ping","id":"p"} trailing', ErrorCode.BAD_JSON, None),
        (b"[]", ErrorCode.BAD_JSON, None),
        (b'[{"type":"ping","id":"p"}]', ErrorCode.BAD_JSON, None),
        (b'"ping"', ErrorCode.BAD_JSON, None),
        (b"null", ErrorCode.BAD_JSON, None),
        (b"42", ErrorCode.BAD_JSON, None),
        ("{'type': 'ping'}", ErrorCode.BAD_JSON, None),
        # An object without a known type.
        (b"{}", ErrorCode.UNKNOWN_TYPE, None),
        (b'{"id":"a1"}', ErrorCode.UNKNOWN_TYPE, "a1"),
        (b'{"type":"pong","id":3}', ErrorCode.UNKNOWN_TYPE, 3),
        (b'{"type":"Subscribe","id":"s"}', ErrorCode.UNKNOWN_TYPE, "s"),
        (b'{"type":"snapshot","id":"s"}', ErrorCode.UNKNOWN_TYPE, "s"),
        (b'{"type":null,"id":"x"}', ErrorCode.UNKNOWN_TYPE, "x"),
        (b'{"type":5}', ErrorCode.UNKNOWN_TYPE, None),
        (b'{"type":["ping"],"id":"l"}', ErrorCode.UNKNOWN_TYPE, "l"),
        ('{"type":"pong","id":"str-input"}', ErrorCode.UNKNOWN_TYPE, "str-input"),
        # A known type with wrong or missing fields.
        (b'{"type":"subscribe","markets":"fb-0001:1x2","id":"s1"}', ErrorCode.INVALID, "s1"),
        (b'{"type":"subscribe","markets":[1],"id":2}', ErrorCode.INVALID, 2),
        (b'{"type":"subscribe","lobbies":{"football":true}}', ErrorCode.INVALID, None),
        (b'{"type":"unsubscribe","events":[null],"id":"u"}', ErrorCode.INVALID, "u"),
        (b'{"type":"resume","id":"r1"}', ErrorCode.INVALID, "r1"),
        (
            b'{"type":"resume","positions":[{"market_id":"m","epoch":"e"}],"id":"r2"}',
            ErrorCode.INVALID,
            "r2",
        ),
        (
            b'{"type":"resume","positions":[{"market_id":"m","epoch":"e","seq":"3"}]}',
            ErrorCode.INVALID,
            None,
        ),
        (b'{"type":"resume","positions":{"m":3},"id":0}', ErrorCode.INVALID, 0),
        # An id of the wrong type is not echoed (it could not be matched anyway).
        (b'{"type":"ping","id":true}', ErrorCode.INVALID, None),
        (b'{"type":"ping","id":1.5}', ErrorCode.INVALID, None),
        (b'{"type":"ping","id":{"n":1}}', ErrorCode.INVALID, None),
        (b'{"type":"ping","id":["p"]}', ErrorCode.INVALID, None),
    ],
)
def test_decode_command_errors(data: bytes | str, code: ErrorCode, command_id: object) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_command(data)
    error = caught.value
    assert error.code is code
    assert error.command_id == command_id
    assert type(error.command_id) is type(command_id)
    assert error.message
    assert str(error) == error.message


@pytest.mark.parametrize(
    ("data", "mentions"),
    [
        (b'{"type":"subscribe","markets":"m"}', "$.markets"),
        (b'{"type":"resume"}', "positions"),
        (b'{"type":"pong"}', "'pong'"),
        (b"[1]", "JSON object"),
    ],
)
def test_decode_command_error_messages_say_what_is_wrong(data: bytes, mentions: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_command(data)
    assert mentions in caught.value.message


def test_decode_command_ignores_unknown_fields() -> None:
    # Forward compatibility: a newer client may send fields this server does not know.
    assert decode_command(b'{"type":"ping","id":"p","trace":"abc"}') == Ping(id="p")


def test_decode_command_accepts_the_tag_anywhere() -> None:
    assert decode_command(b'{"id":9,"markets":["m"],"type":"subscribe"}') == Subscribe(
        markets=("m",), id=9
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"type":"ping","id":1.5,"id":1}', Ping(id=1)),
        (b'{"type":"pong","type":"ping"}', Ping()),
        (b'{"type":"ping","type":"subscribe","markets":["m"]}', Subscribe(markets=("m",))),
    ],
)
def test_decode_command_duplicate_keys_last_one_wins(data: bytes, expected: ClientCommand) -> None:
    # The typed decoder refuses these; the precise-error path reads them as JavaScript's
    # JSON.parse does (the last duplicate wins) and accepts the command.
    assert decode_command(data) == expected


def _nested(depth: int) -> bytes:
    return b'{"type":"ping","x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize(
    ("data", "deep"),
    [
        (_nested(MAX_DEPTH), False),
        (_nested(MAX_DEPTH + 1), True),
        (_nested(10_000), True),
        (b"[" * 20_000, True),
        # Brackets inside strings, escaped quotes and backslashes do not nest.
        (b'{"type":"subscribe","markets":["' + b"[" * 50 + b'"]}', False),
        (b'{"type":"subscribe","markets":["a\\"b' + b"[" * 50 + b'"]}', False),
        (b'{"type":"subscribe","markets":["a\\\\",' + b"[" * 9 + b"]" * 9 + b"]}", True),
        (b"[]" * 30_000, False),
    ],
)
def test_too_deep_counts_nesting_outside_strings(data: bytes, deep: bool) -> None:
    assert too_deep(data) is deep


def test_deep_nesting_is_refused_before_decoding() -> None:
    # 10k levels in a 20 KB frame: msgspec would raise RecursionError.
    for data in (_nested(10_000), _nested(10_000).decode(), b"[" * 10_000 + b"]" * 10_000):
        with pytest.raises(ProtocolError) as caught:
            decode_command(data)
        assert caught.value.code == ErrorCode.TOO_DEEP


@pytest.mark.parametrize(
    "command",
    [
        {"type": "subscribe", "markets": ["m" * (MAX_NAME_CHARS + 1)]},
        {"type": "subscribe", "markets": [""]},
        {"type": "subscribe", "events": ["e"] * (MAX_NAMES + 1)},
        {"type": "unsubscribe", "lobbies": ["x" * (MAX_NAME_CHARS + 1)]},
        {"type": "ping", "id": "i" * (MAX_NAME_CHARS + 1)},
        {"type": "resume", "positions": [{"market_id": "m", "epoch": "e", "seq": MAX_SEQ + 1}]},
        {"type": "resume", "positions": [{"market_id": "m", "epoch": "e", "seq": -1}]},
        {"type": "resume", "positions": [], "token": "t" * (MAX_TOKEN_CHARS + 1)},
        {"type": "resume", "positions": [], "conflate_ms": -5},
        {"type": "auth", "token": ""},
        {"type": "refresh"},
    ],
)
def test_commands_beyond_the_shape_limits_are_invalid(command: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_command(json.dumps(command).encode())
    assert caught.value.code == ErrorCode.INVALID


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["type", "id", "markets", "events", "lobbies", "positions", "x"]),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=64),
        _json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {"type": st.sampled_from(sorted(COMMAND_TYPES))},
            optional={
                "id": _json_values,
                "markets": _json_values,
                "events": _json_values,
                "lobbies": _json_values,
                "positions": _json_values,
            },
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_decode_command_never_fails_otherwise(data: bytes) -> None:
    """Any input yields a command or a ProtocolError, and a command re-encodes to an
    equal command."""
    outcome = _decode_or_error(data)
    if isinstance(outcome, ProtocolError):
        assert outcome.code in {
            ErrorCode.BAD_JSON,
            ErrorCode.UNKNOWN_TYPE,
            ErrorCode.INVALID,
            ErrorCode.TOO_DEEP,
        }
        assert outcome.command_id is None or isinstance(outcome.command_id, str | int)
    else:
        assert decode_command(encode(outcome)) == outcome


def _decode_or_error(data: bytes) -> ClientCommand | ProtocolError:
    try:
        return decode_command(data)
    except ProtocolError as error:
        return error


# ---------------------------------------------------------------------------
# apply
# ---------------------------------------------------------------------------

SUSPENDED = msgspec.structs.replace(SNAPSHOT, status="suspended", reason="goal")


@pytest.mark.parametrize(
    ("before", "change", "expected"),
    [
        pytest.param(SNAPSHOT, delta(), SNAPSHOT, id="empty"),
        pytest.param(
            SNAPSHOT,
            delta(status="suspended", reason="goal"),
            msgspec.structs.replace(SNAPSHOT, status="suspended", reason="goal"),
            id="suspend",
        ),
        pytest.param(
            SUSPENDED,
            delta(status="open", reason=None),
            msgspec.structs.replace(SUSPENDED, status="open", reason=None),
            id="reopen-clears-reason",
        ),
        pytest.param(
            SUSPENDED,
            delta(status="closed"),
            msgspec.structs.replace(SUSPENDED, status="closed"),
            id="status-only-keeps-reason",
        ),
        pytest.param(
            SUSPENDED,
            delta(reason="var"),
            msgspec.structs.replace(SUSPENDED, reason="var"),
            id="reason-only",
        ),
        pytest.param(
            SNAPSHOT,
            delta(selections=(SelectionChange("draw", price=Decimal("3.25")),)),
            msgspec.structs.replace(
                SNAPSHOT, selections=(HOME, Selection("draw", "Draw", Decimal("3.25")), AWAY)
            ),
            id="price",
        ),
        pytest.param(
            SNAPSHOT,
            delta(selections=(SelectionChange("home", price=None),)),
            msgspec.structs.replace(
                SNAPSHOT, selections=(Selection("home", "Arsenal"), DRAW, AWAY)
            ),
            id="price-withdrawn",
        ),
        pytest.param(
            SNAPSHOT,
            delta(selections=(SelectionChange("away", status="removed", price=None),)),
            msgspec.structs.replace(
                SNAPSHOT, selections=(HOME, DRAW, Selection("away", "Chelsea", None, "removed"))
            ),
            id="removal",
        ),
        pytest.param(
            SNAPSHOT,
            delta(selections=(SelectionChange("home", name="Arsenal FC"),)),
            msgspec.structs.replace(
                SNAPSHOT, selections=(Selection("home", "Arsenal FC", Decimal("2.10")), DRAW, AWAY)
            ),
            id="rename",
        ),
        pytest.param(
            SNAPSHOT,
            delta(
                selections=(
                    SelectionChange("other", name="Other", price=Decimal("51")),
                    SelectionChange("home", price=Decimal("2.00")),
                )
            ),
            msgspec.structs.replace(
                SNAPSHOT,
                selections=(
                    Selection("home", "Arsenal", Decimal("2.00")),
                    DRAW,
                    AWAY,
                    Selection("other", "Other", Decimal("51")),
                ),
            ),
            id="new-selection-appended-order-kept",
        ),
        pytest.param(
            SNAPSHOT,
            delta(selections=(SelectionChange("nameless", status="void"),)),
            msgspec.structs.replace(
                SNAPSHOT,
                selections=(HOME, DRAW, AWAY, Selection("nameless", "nameless", None, "void")),
            ),
            id="new-selection-without-name-is-named-by-id",
        ),
        pytest.param(
            SNAPSHOT,
            delta(
                status="settled",
                selections=(
                    SelectionChange("home", status="winner"),
                    SelectionChange("draw", status="loser"),
                    SelectionChange("away", status="loser"),
                ),
            ),
            msgspec.structs.replace(
                SNAPSHOT,
                status="settled",
                selections=(
                    Selection("home", "Arsenal", Decimal("2.10"), "winner"),
                    Selection("draw", "Draw", Decimal("3.40"), "loser"),
                    Selection("away", "Chelsea", Decimal("3.60"), "loser"),
                ),
            ),
            id="settle",
        ),
        pytest.param(as_reset(SNAPSHOT), delta(), SNAPSHOT, id="reset-flag-is-not-carried-forward"),
        pytest.param(
            EXCHANGE,
            delta(
                13,
                epoch=EXCHANGE.epoch,
                market_id=EXCHANGE.market_id,
                volume=Decimal("25200"),
                selections=(
                    SelectionChange(
                        "44331354",
                        price=Decimal("8.6"),
                        back=((Decimal("8.6"), Decimal("4.83")),),
                        ltp=Decimal("8.8"),
                    ),
                ),
            ),
            msgspec.structs.replace(
                EXCHANGE,
                volume=Decimal("25200"),
                selections=(
                    msgspec.structs.replace(
                        EXCHANGE.selections[0],
                        price=Decimal("8.6"),
                        back=((Decimal("8.6"), Decimal("4.83")),),
                        ltp=Decimal("8.8"),
                    ),
                    *EXCHANGE.selections[1:],
                ),
            ),
            id="exchange-levels-replace-whole-others-kept",
        ),
        pytest.param(
            EXCHANGE,
            delta(
                13,
                epoch=EXCHANGE.epoch,
                market_id=EXCHANGE.market_id,
                volume=None,
                selections=(
                    SelectionChange(
                        "44331354", back=(), lay=(), ltp=None, volume=None, bsp=None, price=None
                    ),
                    SelectionChange("37947503", status="active", adjustment=None, removed_at=None),
                    SelectionChange("36276560", status="active", dead_heat=None),
                    SelectionChange(
                        "new",
                        name="New",
                        price=Decimal("5"),
                        lay=((Decimal("5.5"), Decimal("2")),),
                        void_factor=Decimal("0.5"),
                    ),
                ),
            ),
            msgspec.structs.replace(
                EXCHANGE,
                volume=None,
                selections=(
                    Selection("44331354", "1. Paradise Mission"),
                    Selection("37947503", "2. Sandwood Jet"),
                    Selection("36276560", "3. Kirabilly Kathy"),
                    Selection(
                        "new",
                        "New",
                        Decimal("5"),
                        lay=((Decimal("5.5"), Decimal("2")),),
                        void_factor=Decimal("0.5"),
                    ),
                ),
            ),
            id="exchange-fields-cleared-and-a-new-selection-with-them",
        ),
    ],
)
def test_apply(before: Snapshot, change: Delta, expected: Snapshot) -> None:
    after = apply(before, change)
    assert after == msgspec.structs.replace(expected, seq=change.seq, ts=change.ts)
    assert encode(after) == encode(msgspec.structs.replace(expected, seq=change.seq, ts=change.ts))


def test_apply_leaves_its_input_alone() -> None:
    before = encode(SNAPSHOT)
    apply(SNAPSHOT, delta(status="suspended", selections=(SelectionChange("home", price=None),)))
    assert encode(SNAPSHOT) == before


def test_apply_chains() -> None:
    book = SNAPSHOT
    for seq, price in enumerate(("2.08", "2.06", "2.10"), start=8):
        book = apply(book, delta(seq, selections=(SelectionChange("home", price=Decimal(price)),)))
    assert book.seq == 10
    assert book.selections[0].price == Decimal("2.10")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param(delta(seq=9), "gap", id="gap"),
        pytest.param(delta(seq=100), "gap", id="far-gap"),
        pytest.param(delta(seq=7), "stale", id="duplicate"),
        pytest.param(delta(seq=3), "stale", id="stale"),
        pytest.param(delta(seq=0), "stale", id="zero"),
        pytest.param(delta(epoch="p2-0001"), "epoch", id="epoch"),
        pytest.param(delta(seq=1, epoch="p2-0001"), "epoch", id="epoch-before-seq"),
        pytest.param(delta(market_id="fb-0001:ou25"), "market", id="market"),
        pytest.param(
            delta(seq=99, market_id="fb-0002:1x2", epoch="x"), "market", id="market-first"
        ),
    ],
)
def test_apply_refuses(change: Delta, reason: str) -> None:
    with pytest.raises(ApplyError) as caught:
        apply(SNAPSHOT, change)
    assert caught.value.reason == reason
    assert change.market_id in str(caught.value)


def test_apply_selection_changes_without_changes_is_identity() -> None:
    assert apply_selection_changes(SNAPSHOT.selections, ()) == SNAPSHOT.selections


def test_as_reset() -> None:
    reset = as_reset(SNAPSHOT)
    assert reset.reset is True
    assert SNAPSHOT.reset is False
    assert msgspec.structs.replace(reset, reset=False) == SNAPSHOT
    assert as_reset(reset) == reset
    assert json.loads(encode(reset))["reset"] is True
    assert "reset" not in json.loads(encode(SNAPSHOT))


# ---------------------------------------------------------------------------
# Error and close codes, subprotocols
# ---------------------------------------------------------------------------


def test_error_code_values_are_the_wire_contract() -> None:
    assert {code.value for code in ErrorCode} == {
        "bad_json",
        "unknown_type",
        "invalid",
        "unknown_market",
        "unknown_event",
        "unknown_lobby",
        "too_many_subscriptions",
        "unavailable",
        "too_deep",
        "rate_limited",
        "unauthorized",
        "token_invalid",
        "token_expired",
        "forbidden",
    }


@pytest.mark.parametrize(
    ("code", "value", "retriable"),
    [
        (CloseCode.GOING_AWAY, 4000, True),
        (CloseCode.SLOW_CONSUMER, 4001, True),
        (CloseCode.NOT_READING, 4002, True),
        (CloseCode.TOKEN_EXPIRED, 4003, True),
        (CloseCode.PROTOCOL_VIOLATION, 4100, False),
        (CloseCode.UNSUPPORTED_SUBPROTOCOL, 4101, False),
        (CloseCode.UNAUTHORIZED, 4102, False),
        (CloseCode.RATE_LIMITED, 4103, False),
    ],
)
def test_close_codes(code: CloseCode, value: int, retriable: bool) -> None:
    assert code.value == value
    assert code.retriable is retriable


def test_close_code_ranges() -> None:
    assert {c for c in CloseCode if c.retriable} == {c for c in CloseCode if 4000 <= c < 4100}
    assert all(4000 <= c < 4200 for c in CloseCode)
    assert MESSAGE_TOO_BIG == 1009


def test_subprotocols() -> None:
    assert SUBPROTOCOL_JSON == "oddstream.v1.json"
    assert SUBPROTOCOL_MSGPACK == "oddstream.v1.msgpack"


def test_protocol_error_carries_its_code() -> None:
    error = ProtocolError(ErrorCode.UNKNOWN_MARKET, "no such market", "s1")
    assert (error.code, error.message, error.command_id) == (
        ErrorCode.UNKNOWN_MARKET,
        "no such market",
        "s1",
    )
    assert ProtocolError(ErrorCode.INVALID, "x").command_id is None


# ---------------------------------------------------------------------------
# Older clients: the exchange fields are optional additions they never see break
# ---------------------------------------------------------------------------


class _OldSelection(msgspec.Struct, frozen=True):
    selection_id: str
    name: str
    price: Decimal | None = None
    status: str = "active"


class _OldSnapshot(msgspec.Struct, frozen=True, tag="snapshot", tag_field="type"):
    market_id: str
    seq: int
    status: str
    selections: tuple[_OldSelection, ...]


class _OldSelectionChange(msgspec.Struct, frozen=True):
    selection_id: str
    price: Decimal | msgspec.UnsetType | None = msgspec.UNSET
    status: str | msgspec.UnsetType = msgspec.UNSET


class _OldDelta(msgspec.Struct, frozen=True, tag="delta", tag_field="type"):
    market_id: str
    seq: int
    selections: tuple[_OldSelectionChange, ...] = ()


def test_a_client_that_predates_the_exchange_fields_still_reads_the_board() -> None:
    old = msgspec.json.decode(encode(EXCHANGE), type=_OldSnapshot | _OldDelta)
    assert isinstance(old, _OldSnapshot)
    assert [(s.selection_id, s.price, s.status) for s in old.selections] == [
        (s.selection_id, s.price, s.status) for s in EXCHANGE.selections
    ]
    change = delta(
        volume=Decimal("1"),
        selections=(SelectionChange("h", price=Decimal("2"), back=(), ltp=None),),
    )
    old_delta = msgspec.json.decode(encode(change), type=_OldSnapshot | _OldDelta)
    assert old_delta == _OldDelta(MARKET, 8, (_OldSelectionChange("h", Decimal("2")),))
