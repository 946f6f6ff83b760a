"""Streaming connections written straight on the socket (WebSocket and SSE).

Fan-out only puts a frame in a client's :class:`~server.outbox.Outbox`; the outbox calls
the connection's :meth:`StreamConnection.wake` when it stops being empty, which marks the
connection dirty. :class:`Streams` flushes every dirty connection once per event-loop
turn (or ``coalesce_ms`` after the first wake), and each flush writes everything the
outbox lets go in one ``write``: per-client write coalescing, with no task per
connection and no await per frame. While a client's kernel buffer is full (the transport
paused writing) nothing is taken from its outbox, so its backlog stays where it can be
conflated; a client whose socket stays unwritable past ``send_timeout_s`` is dropped, one
that overflows its outbox is closed as a slow consumer.

A connection with nothing sent for a heartbeat interval gets a ``heartbeat`` (one frame
for all of them), checked every quarter interval.
"""

from __future__ import annotations

import asyncio
from typing import cast

from channels.frame import Frame
from protocol import CloseCode
from server.admission import Ticket
from server.gateway import Gateway
from server.session import Session

REASONS = {
    CloseCode.SLOW_CONSUMER: "too far behind; resume",
    CloseCode.NOT_READING: "not reading; resume",
    CloseCode.GOING_AWAY: "server closing",
    CloseCode.TOKEN_EXPIRED: "token expired; resume with a new token",
    CloseCode.UNAUTHORIZED: "unauthorized",
    CloseCode.RATE_LIMITED: "too many commands",
}


class Streams:
    """The node's streaming connections: the flush of dirty ones and the heartbeat."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.connections: set[StreamConnection] = set()
        self._dirty: list[StreamConnection] = []
        self._scheduled = False
        self._window_s = gateway.settings.coalesce_ms / 1000
        self._heartbeat: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def wake(self, conn: StreamConnection) -> None:
        """``conn`` has frames to write: flush it with the next flush."""
        if conn.dirty:
            return
        conn.dirty = True
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            if self._window_s:
                loop.call_later(self._window_s, self._flush)
            else:
                loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        now = asyncio.get_running_loop().time()
        clock = self.gateway.fanout_clock  # The stage timings (docs/observability.md).
        clock.pass_started()
        for conn in dirty:
            conn.dirty = False
            conn.flush(now)
        clock.pass_ended()

    def add(self, conn: StreamConnection) -> None:
        self.connections.add(conn)
        if self._heartbeat is None:
            self._schedule_heartbeat()

    def remove(self, conn: StreamConnection) -> None:
        self.connections.discard(conn)

    def shutdown(self) -> None:
        """Close every stream (the listener is stopping, after the drain)."""
        for conn in list(self.connections):
            conn.shutdown()

    def close_session(self, session: Session) -> None:
        """Close ``session`` from a callback: forgotten at once, released in a task."""
        self.gateway.forget_session(session)
        session.outbox.close()
        task = asyncio.get_running_loop().create_task(self.gateway.close_session(session))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _schedule_heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        self._heartbeat = loop.call_later(self.gateway.settings.heartbeat_s / 4, self._beat)

    def _beat(self) -> None:
        frame: Frame | None = None
        quiet_since = asyncio.get_running_loop().time() - self.gateway.settings.heartbeat_s
        for conn in self.connections:
            if conn.sent_at <= quiet_since and conn.streaming:
                frame = frame or self.gateway.heartbeat()
                conn.offer(frame)
                self.gateway.stats.heartbeats += 1
        if self.connections:
            self._schedule_heartbeat()
        else:
            self._heartbeat = None


class StreamConnection(asyncio.Protocol):
    """What WebSocket and SSE connections share: flow control, the flush, timeouts and
    teardown. A subclass opens ``self.session`` (with ``waker=self.wake``) and writes
    frames in :meth:`write`; :meth:`end` closes the stream its own way. ``kind`` is its
    transport and subprotocol, as the metrics label them."""

    kind: tuple[str, str] = ("sse", "none")

    def __init__(self, streams: Streams, ticket: Ticket | None = None):
        self.streams = streams
        self.gateway = streams.gateway
        self._ticket = ticket  # Released when the socket is gone (server/admission.py).
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.dirty = False
        self.sent_at = asyncio.get_running_loop().time()
        self.paused = False
        self.closing = False
        self._stuck: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._abort: asyncio.TimerHandle | None = None
        self._released = False

    @property
    def streaming(self) -> bool:
        return self.session is not None and not self.closing

    def offer(self, frame: Frame) -> None:
        if self.session is not None:
            self.session.offer(frame)

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        self.transport = cast(asyncio.Transport, transport)
        self.streams.add(self)

    def pause_writing(self) -> None:
        self.paused = True
        if self._stuck is None and self.session is not None:
            loop = asyncio.get_running_loop()
            self._stuck = loop.call_later(self.gateway.limits.send_timeout_s, self._not_reading)

    def resume_writing(self) -> None:
        self.paused = False
        if self._stuck is not None:
            self._stuck.cancel()
            self._stuck = None
        self.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ticket is not None:
            self._ticket.release()
        self.streams.remove(self)
        for timer in (self._stuck, self._timer, self._abort):
            if timer is not None:
                timer.cancel()
        self.closing = True
        self.release()

    def release(self) -> None:
        """Detach the session (once): the stream is ending, nothing more is sent."""
        if self.session is not None and not self._released:
            self._released = True
            self.streams.close_session(self.session)

    def shutdown(self) -> None:
        """The listener is stopping (after the drain): close what is left."""
        self.end(CloseCode.GOING_AWAY)

    # -- writing ----------------------------------------------------------------------------

    def wake(self) -> None:
        """The outbox has something (or changed state): flush with the next flush."""
        if not self.closing:
            self.streams.wake(self)

    def flush(self, now: float) -> None:
        """Write everything the outbox lets go now (up to a batch), in one write."""
        session = self.session
        if self.closing or session is None:
            return
        outbox = session.outbox
        if outbox.overflowed:
            self.gateway.stats.slow_consumer_closes += 1
            self.end(CloseCode.SLOW_CONSUMER)
            return
        if self.paused:
            return  # resume_writing wakes us; the backlog conflates in the outbox.
        frames = outbox.take_now()
        if frames:
            self.write(frames)
            self.sent_at = now
            self.gateway.fanout_clock.wrote(frames[0].received)
        if outbox.closed:
            self.end(session.close_code)
            return
        due = outbox.due_s()
        if due is None:
            return
        if due == 0:
            self.wake()  # More than one batch: the rest with the next flush.
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(due, self._due)

    def write(self, frames: list[Frame]) -> None:
        raise NotImplementedError

    def end(self, code: CloseCode) -> None:
        """Close the stream (the client resumes); subclasses say how, then call
        :meth:`abort_later`."""
        raise NotImplementedError

    def abort_later(self) -> None:
        """Release the session now, and drop the connection if the close has not
        completed within ``close_timeout_s`` (a client that stopped reading never takes
        the last bytes)."""
        self.release()
        transport = self.transport
        if transport is not None and self._abort is None:
            loop = asyncio.get_running_loop()
            timeout = self.gateway.settings.close_timeout_s
            self._abort = loop.call_later(timeout, transport.abort)

    def _due(self) -> None:
        self._timer = None
        self.wake()

    def _not_reading(self) -> None:
        """The socket stayed unwritable past the send timeout: the client is gone or
        stopped reading."""
        self._stuck = None
        if not self.closing:
            self.gateway.stats.dead_client_closes += 1
            self.end(CloseCode.NOT_READING)
