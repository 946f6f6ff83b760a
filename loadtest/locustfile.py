"""Match-day replay with locust: front ends on WebSocket and SSE, as real ones subscribe,
with a traffic shape that follows a match day played N times faster.

Locust has no WebSocket or SSE user; these are written here on plain (gevent) sockets
with :mod:`loadtest.wsframe`. Every delta a user receives is reported as a locust request
whose response time is its lag: receipt time minus the feed's own timestamp (``ts``).

Users (weights in brackets):

* ``LobbyUser`` (5): the sport lobby, ``subscribe {lobbies: [sport]}``, on the WebSocket;
* ``EventPageUser`` (3): one live match's page, ``subscribe {events: [id]}``; moves to
  another match now and then (``unsubscribe``, ``subscribe``);
* ``BetSlipUser`` (2): a bet slip of 1-3 markets, adding one and dropping the oldest;
* ``MobileSSEUser`` (2): a mobile app on ``/sse?events=id``, reopening on another match.

The shape (``MatchDayShape``) replays a recording made by :mod:`loadtest.matchday`
(generated at start unless ``LOADTEST_RECORDING`` names one): users ramp up towards the
kick-offs, follow the number of live matches, and spike on every goal and kick-off.
``LOADTEST_FEED`` says who plays the recording:

* ``dev``: the shape starts ``oddstream dev --feed jsonl:REC --speed 1`` on
  ``LOADTEST_DEV_PORT`` (default 8765; give ``--host http://127.0.0.1:8765``);
* ``kafka``: the shape starts ``oddstream feed replay REC --speed 1`` into the cluster's
  Kafka (``ODDSTREAM_KAFKA``, optional ``LOADTEST_TOPIC_PREFIX``);
* ``none`` (default): the feed is someone else's (e.g. ``oddstream feed synth``, stamped
  with the wall clock); the shape only shapes the traffic.

The recording's timestamps are compressed and anchored to the wall clock, so lag is true
lag once the replayer's start-up offset is known; the shape measures it (``dev``: when the
server says it is serving; ``kafka``: from the replayer's 1000-message progress line) and
shares it with the users (and workers, when distributed).

Settings (environment): ``LOADTEST_SPEED`` (60), ``LOADTEST_EVENTS`` (8),
``LOADTEST_HOURS`` (3), ``LOADTEST_PEAK_USERS`` (200), ``LOADTEST_SPIKE_S`` (20),
``LOADTEST_DWELL_S`` (15), ``LOADTEST_SPORT`` (football). See ``docs/performance.md``.

    locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8765 -t 3m
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from locust import LoadTestShape, User, between, events, task
from locust.env import Environment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest import matchday, wsframe

SPEED = float(os.environ.get("LOADTEST_SPEED", "60"))
PEAK = int(os.environ.get("LOADTEST_PEAK_USERS", "200"))
SPIKE_S = float(os.environ.get("LOADTEST_SPIKE_S", "20"))
DWELL_S = float(os.environ.get("LOADTEST_DWELL_S", "15"))
SPORT = os.environ.get("LOADTEST_SPORT", "football")
FEED = os.environ.get("LOADTEST_FEED", "none")
DEV_PORT = int(os.environ.get("LOADTEST_DEV_PORT", "8765"))
ROOT = Path(__file__).resolve().parent.parent

_TS = re.compile(rb'"ts":(\d+)')
_DELTA = b'"type":"delta"'


class _Lag:
    """The replayer's start-up offset (ms), subtracted from every measured lag. Zero when
    the feed stamps the wall clock itself (``LOADTEST_FEED=none``)."""

    offset_ms = 0.0
    known = FEED == "none"


def _set_offset(offset_ms: float) -> None:
    _Lag.offset_ms = offset_ms
    _Lag.known = True


def _on_init(environment: Environment, **kwargs: Any) -> None:
    runner = environment.runner
    if runner is not None and hasattr(runner, "register_message"):
        runner.register_message("lag_offset", lambda msg, **kw: _set_offset(float(msg.data)))


events.init.add_listener(_on_init)  # type: ignore[no-untyped-call]


# -- connections --------------------------------------------------------------------------------


class Closed(Exception):
    def __init__(self, code: int, reason: str = ""):
        super().__init__(f"closed {code} {reason}".strip())
        self.code = code


class Stream:
    """A WebSocket or SSE connection on a (gevent-patched) blocking socket."""

    def __init__(self, base: str, target: str, *, sse: bool, timeout_s: float = 10.0):
        parts = urlsplit(base)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.sse = sse
        sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
        if parts.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        self.sock = sock
        self.buf = b""
        lines = [f"GET {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if sse:
            lines += ["Accept: text/event-stream", "Cache-Control: no-cache"]
        else:
            lines += [
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {wsframe.new_key().decode()}",
                "Sec-WebSocket-Version: 13",
                "Sec-WebSocket-Protocol: oddstream.v1.json",
            ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = self._until(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if (b" 101 " if not sse else b" 200 ") not in status + b" ":
            raise Closed(0, status.decode(errors="replace"))
        self.chunked = b"transfer-encoding: chunked" in head.lower()
        self.body = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise Closed(1006, "connection lost")
        self.buf += data

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(marker)
        return head

    def send(self, command: dict[str, Any]) -> None:
        self.sock.sendall(wsframe.client_frame(json.dumps(command).encode()))

    def messages(self, until: float) -> Iterator[bytes]:
        """Messages (JSON bytes) until the monotonic deadline ``until``."""
        while time.monotonic() < until:
            self.sock.settimeout(max(0.05, until - time.monotonic()))
            try:
                yield from (self._sse_events() if self.sse else self._ws_frames())
                self._fill()
            except TimeoutError:
                return

    def _ws_frames(self) -> Iterator[bytes]:
        while len(self.buf) >= 2:
            length = self.buf[1] & 0x7F
            head = 2
            if length == 126:
                if len(self.buf) < 4:
                    return
                length, head = int.from_bytes(self.buf[2:4], "big"), 4
            elif length == 127:
                if len(self.buf) < 10:
                    return
                length, head = int.from_bytes(self.buf[2:10], "big"), 10
            if len(self.buf) < head + length:
                return
            op = self.buf[0] & 0x0F
            payload = self.buf[head : head + length]
            self.buf = self.buf[head + length :]
            if op == wsframe.OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                raise Closed(code, payload[2:].decode(errors="replace"))
            if op == wsframe.OP_PING:
                self.sock.sendall(wsframe.client_frame(payload, wsframe.OP_PONG))
            elif op in (wsframe.OP_TEXT, wsframe.OP_BINARY):
                yield payload

    def _sse_events(self) -> Iterator[bytes]:
        if self.chunked:
            while True:
                eol = self.buf.find(b"\r\n")
                if eol < 0:
                    break
                size = int(self.buf[:eol].split(b";")[0] or b"0", 16)
                if len(self.buf) < eol + 2 + size + 2:
                    break
                self.body += self.buf[eol + 2 : eol + 2 + size]
                self.buf = self.buf[eol + 2 + size + 2 :]
        else:
            self.body, self.buf = self.body + self.buf, b""
        while True:
            cut = self.body.find(b"\n\n")
            if cut < 0:
                return
            event, self.body = self.body[:cut], self.body[cut + 2 :]
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    yield line[5:].strip()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if not self.sse:
                self.sock.sendall(wsframe.close_frame(1000))
            self.sock.close()


# -- users --------------------------------------------------------------------------------------


class FrontEnd(User):
    """What every front end does: open a stream, subscribe, read and report lag."""

    abstract = True
    wait_time = between(0.0, 0.5)
    kind = "WS"

    def on_start(self) -> None:
        self.stream: Stream | None = None
        self.events: list[str] = []
        self.markets: list[str] = []

    def on_stop(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    def _fire(self, name: str, ms: float, length: int = 0, exc: Exception | None = None) -> None:
        self.environment.events.request.fire(
            request_type=self.kind,
            name=name,
            response_time=ms,
            response_length=length,
            exception=exc,
            context={},
        )

    def get(self, path: str) -> Any:
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(f"{self.host}".rstrip("/") + path, timeout=10) as r:  # noqa: S310
                body = r.read()
        except OSError as exc:
            self._fire(f"GET {path.split('?')[0]}", (time.perf_counter() - started) * 1000, 0, exc)
            raise
        self._fire(f"GET {path.split('?')[0]}", (time.perf_counter() - started) * 1000, len(body))
        return json.loads(body)

    def live_events(self) -> list[str]:
        listed = self.get(f"/v1/events?sport={SPORT}") or self.get("/v1/events")
        live = [e["event_id"] for e in listed if e.get("phase") == "live"]
        return live or [e["event_id"] for e in listed]

    def connect(self, target: str, *, sse: bool = False) -> Stream:
        started = time.perf_counter()
        try:
            stream = Stream(f"{self.host}", target, sse=sse)
        except (OSError, Closed) as exc:
            self._fire("connect", (time.perf_counter() - started) * 1000, 0, exc)
            raise
        self._fire("connect", (time.perf_counter() - started) * 1000)
        return stream

    def read(self, seconds: float) -> None:
        """Read for ``seconds``, reporting each delta's lag and each snapshot's wait."""
        assert self.stream is not None
        asked = time.perf_counter()
        first_snapshot = True
        try:
            for message in self.stream.messages(time.monotonic() + seconds):
                now_ms = time.time() * 1000
                if message.startswith(b'{"type":"snapshot"') and first_snapshot:
                    first_snapshot = False
                    self._fire("snapshot", (time.perf_counter() - asked) * 1000, len(message))
                elif _DELTA in message[:20] and _Lag.known:
                    match = _TS.search(message)
                    if match:
                        # ts is whole ms, truncated: + 0.5 ms is the unbiased estimate.
                        lag = now_ms - int(match.group(1)) - 0.5 - _Lag.offset_ms
                        self._fire("delta lag (feed ts)", max(0.0, lag), len(message))
        except Closed as exc:
            self._fire("stream", 0, 0, exc)
            self.stream = None
        except OSError as exc:
            self._fire("stream", 0, 0, exc)
            self.stream = None


class LobbyUser(FrontEnd):
    """The sport lobby: every live match's main markets."""

    weight = 5

    @task
    def lobby(self) -> None:
        if self.stream is None:
            self.stream = self.connect("/ws")
            self.stream.send({"type": "subscribe", "lobbies": [SPORT], "id": "lobby"})
        self.read(DWELL_S)


class EventPageUser(FrontEnd):
    """One match's page; the user moves on to another match now and then."""

    weight = 3

    @task
    def event_page(self) -> None:
        if not self.events:
            self.events = self.live_events()[:1] if self.live_events() else []
        if not self.events:
            time.sleep(1)
            return
        if self.stream is None:
            self.stream = self.connect("/ws")
            self.stream.send({"type": "subscribe", "events": self.events, "id": "page"})
        self.read(DWELL_S * random.uniform(0.5, 1.5))
        if self.stream is not None:
            nxt = random.choice(self.live_events())
            self.stream.send({"type": "unsubscribe", "events": self.events})
            self.events = [nxt]
            self.stream.send({"type": "subscribe", "events": self.events, "id": "page"})


class BetSlipUser(FrontEnd):
    """A bet slip: a few markets; adds one, drops the oldest past three."""

    weight = 2

    @task
    def bet_slip(self) -> None:
        candidates = [m["market_id"] for m in self.get("/v1/markets") if m.get("status") == "open"]
        if not candidates:
            time.sleep(1)
            return
        pick = random.choice(candidates)
        if self.stream is None:
            self.stream = self.connect("/ws")
            self.markets = []
        self.stream.send({"type": "subscribe", "markets": [pick], "id": "slip"})
        self.markets.append(pick)
        if len(self.markets) > 3:
            self.stream.send({"type": "unsubscribe", "markets": [self.markets.pop(0)]})
        self.read(DWELL_S * random.uniform(0.5, 1.5))


class MobileSSEUser(FrontEnd):
    """A mobile app on SSE: one match, a new stream for the next one."""

    weight = 2
    kind = "SSE"

    @task
    def match_stream(self) -> None:
        live = self.live_events()
        if not live:
            time.sleep(1)
            return
        if self.stream is not None:
            self.stream.close()
        self.stream = self.connect(f"/sse?events={random.choice(live)}", sse=True)
        self.read(DWELL_S * random.uniform(0.5, 1.5))


# -- the match-day shape ------------------------------------------------------------------------


class MatchDayShape(LoadTestShape):
    """Users over a match day replayed ``LOADTEST_SPEED`` times faster.

    users(t) = peak x (0.25 + 0.55 x live(t) / max_live + 0.2 x spike(t)), where spike(t)
    decays linearly over ``LOADTEST_SPIKE_S`` seconds after each kick-off and goal."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        given = os.environ.get("LOADTEST_RECORDING")
        self.path = Path(given) if given else Path(tempfile.mkdtemp()) / "matchday.jsonl"
        self.lead_ms = 4000
        if not given:
            anchor = time.time_ns() // 1_000_000 + self.lead_ms
            matchday.write(
                self.path,
                speed=SPEED,
                events=int(os.environ.get("LOADTEST_EVENTS", "8")),
                hours=float(os.environ.get("LOADTEST_HOURS", "3")),
                anchor_ms=anchor,
            )
        self.timeline = matchday.timeline(self.path)
        self.max_live = max(1, self.timeline.max_live())
        self.feed: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self.ready = FEED != "dev"  # dev: no users before the server is serving.
        self.ready_at = 0.0
        print(f"match day: {matchday.describe(self.timeline)}", file=sys.stderr)

    def _start_feed(self) -> None:
        argv: list[str] | None = None
        if FEED == "dev":
            argv = [sys.executable, "-m", "oddstream.cli", "dev", "--feed", f"jsonl:{self.path}"]
            argv += ["--speed", "1", "--port", str(DEV_PORT), "--web", "off"]
        elif FEED == "kafka":
            argv = [sys.executable, "-m", "oddstream.cli", "feed", "replay", str(self.path)]
            argv += ["--speed", "1", "--kafka", os.environ["ODDSTREAM_KAFKA"]]
            if os.environ.get("LOADTEST_TOPIC_PREFIX"):
                argv += ["--topic-prefix", os.environ["LOADTEST_TOPIC_PREFIX"]]
        if argv is None:
            return
        self.feed = subprocess.Popen(  # noqa: S603 - argv built here
            argv,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        import gevent

        gevent.spawn(self._follow_feed)

    def _follow_feed(self) -> None:
        """Measure the replayer's start-up offset from what it prints."""
        assert self.feed is not None
        assert self.feed.stdout is not None
        first_ts = self.timeline.first_ts
        for raw in self.feed.stdout:
            line = raw.decode(errors="replace")
            now_ms = time.time() * 1000
            offset: float | None = None
            if "serving on" in line and FEED == "dev":
                offset = now_ms - first_ts  # The pipeline starts as the server does.
                self.ready = True
            elif " 1000 messages" in line and FEED == "kafka":
                with_1000 = self._ts_of(1000)
                offset = now_ms - with_1000 if with_1000 is not None else None
            if offset is not None:
                _set_offset(offset)
                runner = self.runner
                if runner is not None and hasattr(runner, "send_message"):
                    with contextlib.suppress(Exception):
                        runner.send_message("lag_offset", offset)
                print(f"match day: replayer offset {offset:.0f} ms", file=sys.stderr)

    def _ts_of(self, n: int) -> int | None:
        with self.path.open("rb") as lines:
            for i, line in enumerate(lines, 1):
                if i == n:
                    match = _TS.search(line)
                    return int(match.group(1)) if match else None
        return None

    def _run_time(self) -> float:
        return float(self.get_run_time())  # type: ignore[no-untyped-call]

    def tick(self) -> tuple[int, float] | None:
        if self.started_at is None:
            self.started_at = time.monotonic()
            self._start_feed()
        if not self.ready:
            if time.monotonic() - self.started_at > 60:
                print("match day: the server did not start within 60 s", file=sys.stderr)
                return None
            return 0, 1.0
        if not self.ready_at:
            self.ready_at = self._run_time()
        at_ms = int((self._run_time() - self.ready_at) * 1000)
        if at_ms > self.timeline.duration_ms + 10_000:
            return None  # The feed stops when locust quits, after the users.
        spike = 0.0
        for moment in (*self.timeline.kickoffs, *self.timeline.goals):
            age = (at_ms - moment) / 1000
            if 0 <= age < SPIKE_S:
                spike = max(spike, 1 - age / SPIKE_S)
        share = 0.25 + 0.55 * self.timeline.live(at_ms) / self.max_live + 0.2 * spike
        users = max(1, round(PEAK * min(1.0, share)))
        return users, max(1.0, PEAK / 5)

    def stop_feed(self) -> None:
        if self.feed is not None and self.feed.poll() is None:
            self.feed.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.feed.wait(15)
            if self.feed.poll() is None:
                self.feed.kill()


def _on_quit(environment: Environment, **kwargs: Any) -> None:
    shape = environment.shape_class
    if isinstance(shape, MatchDayShape):
        shape.stop_feed()


events.quitting.add_listener(_on_quit)  # type: ignore[no-untyped-call]
