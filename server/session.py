"""One client's subscription state machine, independent of the transport.

A transport (WebSocket, SSE) feeds the session decoded commands and drains its
:class:`~server.outbox.Outbox`. The session is the one place a command is rate-limited,
authorised (:meth:`Session.authorize`, rules in :mod:`server.auth`), validated against
limits, and turned into hub attachments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import protocol
from channels.frame import Frame
from channels.names import event_channel, lobby_channel, market_channel
from channels.relay import Relay, UnknownMarket
from channels.store import Store, StoreError
from protocol import (
    Ack,
    ClientCommand,
    CloseCode,
    Delta,
    Error,
    ErrorCode,
    Ping,
    Position,
    ProtocolError,
    Resume,
    Snapshot,
    Subscribe,
    Unsubscribe,
)
from protocol.types import Auth, Refresh
from server.auth import EVERYTHING, Authenticator, Grant
from server.outbox import Outbox
from server.resume_token import TokenError, decode_token

log = logging.getLogger(__name__)

#: How long an ended event stays in its sport's lobby for a client subscribing later, by
#: the feed's clock (docs/protocol.md, "Lobbies"); clients already watching get its final
#: books and then nothing more.
LOBBY_LINGER_MS = 60_000

_RESUME_ATTEMPTS = 10  # History fetches before a hot market falls back to a reset.

#: Largest conflation interval a client may ask for (``conflate_ms``).
MAX_CONFLATE_MS = 60_000


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What the transport knows of a connection that the session's checks use: the
    credentials presented before the first command (the ``Authorization`` header value,
    the SSE ``ticket``, a subprotocol entry ``oddstream.token.<jwt>`` among the offered
    ``subprotocols``), the peer address and ``Origin``."""

    authorization: str | None = None
    ticket: str | None = None
    peer: str | None = None
    origin: str | None = None
    subprotocols: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Quotas:
    """Per-connection limits (``docs/protocol.md#limits``, defaults in
    :class:`~server.settings.Settings`): subscriptions, markets per ``resume``, the
    largest ``conflate_ms``, and the command rate: a token bucket of
    ``command_burst`` refilled at ``command_rate`` per second; ``rate_limit_close_after``
    refusals in a row close the connection (4103)."""

    max_subscriptions: int
    max_conflate_ms: int
    max_resume_markets: int
    command_rate: float
    command_burst: int
    rate_limit_close_after: int


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; :meth:`take` spends one."""

    __slots__ = ("_at", "_burst", "_clock", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


async def lookup_books(relay: Relay, store: Store, market_ids: list[str]) -> dict[str, Snapshot]:
    """The books of ``market_ids`` the node or storage knows (for authorisation by event
    or lobby): the relay's where it has them, else storage's."""
    books = {m: s for m in market_ids if (s := relay.current(m)) is not None}
    stored = await store.snapshots(m for m in market_ids if m not in books)
    books.update((s.market_id, s) for s in stored)
    return books


@dataclass
class SessionStats:
    """What a gateway's sessions refused (``/metrics``: ``oddstream_<name>_total``)."""

    rate_limited_commands: int = 0
    """Commands refused ``rate_limited`` (not run)."""
    rate_limit_closes: int = 0
    """Connections closed ``4103`` for sustained rate-limit abuse."""
    token_expired_closes: int = 0
    """Connections closed ``4003`` at their token's expiry (no ``refresh`` in time)."""
    unauthorised_closes: int = 0
    """Connections closed ``4102`` for a refused ``auth``."""
    resumes_exact: int = 0
    """Markets resumed from the client's position."""
    resumes_reset: int = 0
    """Markets that could not be resumed exactly: a fresh snapshot with ``reset``."""


class Session:
    """Subscriptions of one connection. ``offer`` makes it a hub subscriber.

    ``auth`` checks tokens and grants (None: everyone may follow everything); ``info``
    carries credentials the transport received before any command; ``stats`` counts its
    refusals (the gateway's, shared by its sessions). ``close_code`` is the
    code the transport closes with once the outbox is finished (drain, token expiry,
    rate-limit abuse, refused ``auth``)."""

    def __init__(
        self,
        relay: Relay,
        store: Store,
        outbox: Outbox,
        *,
        quotas: Quotas,
        auth: Authenticator | None = None,
        info: ConnectionInfo | None = None,
        stats: SessionStats | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._relay = relay
        self._store = store
        self.outbox = outbox
        # The hub calls ``offer`` once per frame per subscriber: straight to the outbox.
        self.offer: Callable[[Frame], None] = outbox.offer
        self._quotas = quotas
        self._max = quotas.max_subscriptions
        self._max_conflate_ms = quotas.max_conflate_ms
        self._bucket = TokenBucket(quotas.command_rate, quotas.command_burst, clock)
        self._refusals = 0
        self._stats = stats or SessionStats()
        self._auth = auth
        self._info = info or ConnectionInfo()
        # Resolved from ``info`` on the first command that needs it.
        self._grant: Grant | None = None if auth is not None and auth.required else EVERYTHING
        self._expiry: asyncio.TimerHandle | None = None
        self.close_code = CloseCode.GOING_AWAY
        self.markets: set[str] = set()
        self.events: set[str] = set()
        self.lobbies: set[str] = set()
        self.closed = False

    def send(self, message: protocol.ServerMessage) -> None:
        self.outbox.offer(Frame(message))

    async def handle(self, data: str | bytes) -> None:
        """Rate-limit, decode and run one command; any failure becomes an ``error``
        frame. Commands arriving once the session is ending are dropped."""
        if self.closed or self.outbox.closing or self.outbox.closed:
            return
        if not self._bucket.take():
            self._refusals += 1
            self._stats.rate_limited_commands += 1
            rate = self._quotas.command_rate
            self.send(Error(code=ErrorCode.RATE_LIMITED, message=f"at most {rate:g} commands/s"))
            if self._refusals >= self._quotas.rate_limit_close_after:
                self._stats.rate_limit_closes += 1
                self._end(CloseCode.RATE_LIMITED)
            return
        self._refusals = 0
        try:
            command = protocol.decode_command(data)
        except ProtocolError as exc:
            self.send(Error(code=exc.code, message=exc.message, id=exc.command_id))
            return
        await self.run(command)

    async def execute(self, command: ClientCommand) -> None:
        """Run one command. Raises :class:`ProtocolError` when it is refused (the session
        is then unchanged) and :class:`StoreError` when storage fails."""
        if isinstance(command, Auth | Refresh):
            await self._authenticate(command)
            return
        positions = self._positions(command) if isinstance(command, Resume) else []
        await self.authorize(command, positions)
        conflate_ms = self._conflation_of(command)
        match command:
            case Subscribe():
                await self._subscribe(command)
            case Unsubscribe():
                await self._unsubscribe(command)
            case Resume():
                await self._resume(command, positions)
            case Ping():
                self.send(Ack(command="ping", id=command.id))
        if conflate_ms is not None:
            self.conflate(conflate_ms)

    async def run(self, command: ClientCommand) -> None:
        """Run one command; a refusal or failure becomes an ``error`` frame."""
        try:
            await self.execute(command)
        except ProtocolError as exc:
            self.send(Error(code=exc.code, message=exc.message, id=command.id))
        except StoreError as exc:
            self.send(Error(code=ErrorCode.UNAVAILABLE, message=str(exc), id=command.id))

    async def authorize(self, command: ClientCommand, positions: Iterable[Position] = ()) -> None:
        """The single place where a command is checked against the connection's rights:
        every market, event and lobby it names (``positions``: a ``resume``'s, token
        included) must be granted (``docs/auth.md``). Raises :class:`ProtocolError`
        (``unauthorized``, ``forbidden``; for credentials the transport presented,
        ``token_invalid``, ``token_expired``, ``unavailable``)."""
        match command:
            case Subscribe(markets=markets, events=events, lobbies=lobbies):
                pass
            case Resume(events=events, lobbies=lobbies):
                markets = tuple(p.market_id for p in positions)
            case _:
                return  # Leaving or pinging needs no right.
        grant = self._grant
        if grant is None:
            assert self._auth is not None
            info = self._info
            grant = await self._auth.credentials(info.authorization, info.ticket, info.subprotocols)
            self._grant_for(grant)
        if self._auth is not None:  # Without one, every grant is everything.
            await self._auth.authorize(grant, markets, events, lobbies, self._books)

    async def _books(self, market_ids: list[str]) -> Mapping[str, Snapshot]:
        return await lookup_books(self._relay, self._store, market_ids)

    async def _authenticate(self, command: Auth | Refresh) -> None:
        """``auth`` / ``refresh``: take the token's grant. A refused ``auth`` closes the
        connection (4102) unless the issuer's keys were unreachable; a refused
        ``refresh`` leaves the current grant in force."""
        kind = "auth" if isinstance(command, Auth) else "refresh"
        try:
            grant = EVERYTHING if self._auth is None else await self._auth.verify(command.token)
            held = self._grant
            if kind == "refresh" and held and held.subject not in (None, grant.subject):
                raise ProtocolError(ErrorCode.TOKEN_INVALID, "refresh for another subject")
        except ProtocolError as exc:
            self.send(Error(code=exc.code, message=exc.message, id=command.id))
            if kind == "auth" and exc.code != ErrorCode.UNAVAILABLE:
                self._stats.unauthorised_closes += 1
                self._end(CloseCode.UNAUTHORIZED)
            return
        self._grant_for(grant)
        self.send(Ack(command=kind, id=command.id))

    def _grant_for(self, grant: Grant) -> None:
        """Hold ``grant`` from now on, and end the session at its expiry."""
        self._grant = grant
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if grant.expires_at is not None:
            delay = max(0.0, grant.expires_at - time.time())
            self._expiry = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        """The token expired without a ``refresh``: say so, give the positions to resume
        from with a new token, and close (4003)."""
        self._expiry = None
        if self.closed or self.outbox.closing:
            return
        self._stats.token_expired_closes += 1
        message = "token expired: reconnect with a new token and resume"
        self.send(Error(code=ErrorCode.TOKEN_EXPIRED, message=message))
        self.drain("token_expired", 0, CloseCode.TOKEN_EXPIRED)

    # -- conflation ------------------------------------------------------------------------------

    def conflate(self, conflate_ms: int) -> None:
        """Deliver at most one merged update per market every ``conflate_ms`` (0: as they
        come, conflating only when the client falls behind). Raises
        :class:`ProtocolError` (``invalid``) outside 0..``max_conflate_ms``."""
        if not 0 <= conflate_ms <= self._max_conflate_ms:
            raise ProtocolError(ErrorCode.INVALID, f"conflate_ms must be 0-{self._max_conflate_ms}")
        self.outbox.interval_s = conflate_ms / 1000

    def _conflation_of(self, command: ClientCommand) -> int | None:
        """The ``conflate_ms`` of a subscribe or resume, checked (a refused command
        changes nothing); None when the command does not set it."""
        match command:
            case Subscribe() | Resume():
                value = command.conflate_ms
            case _:
                return None
        if value is not None and not 0 <= value <= self._max_conflate_ms:
            raise ProtocolError(ErrorCode.INVALID, f"conflate_ms must be 0-{self._max_conflate_ms}")
        return value

    # -- subscribe -------------------------------------------------------------------------------

    async def _subscribe(self, cmd: Subscribe) -> None:
        await self._open("subscribe", cmd.id, cmd.markets, cmd.events, cmd.lobbies, {})

    async def _open(
        self,
        command: str,
        command_id: str | int | None,
        wanted_markets: Iterable[str],
        wanted_events: Iterable[str],
        wanted_lobbies: Iterable[str],
        positions: dict[str, Position],
    ) -> None:
        """Subscribe to markets, events and lobbies; markets with a ``position`` (resume)
        continue from it instead of starting from a snapshot.

        A refused command changes nothing. For ``resume``, positions of markets that no
        longer exist are left out of the ``ack`` instead of refusing the command."""
        markets = [m for m in dict.fromkeys(wanted_markets) if m not in self.markets]
        events = [e for e in dict.fromkeys(wanted_events) if e not in self.events]
        lobbies = [s for s in dict.fromkeys(wanted_lobbies) if s not in self.lobbies]
        total = len(self.markets) + len(self.events) + len(self.lobbies)
        if total + len(markets) + len(events) + len(lobbies) > self._max:
            raise ProtocolError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"at most {self._max} subscriptions per connection",
            )
        # Validate everything before holding anything, so a refused command changes nothing.
        event_frames = []
        for e in events:
            frame = await self._relay.event(e)
            if frame is None:
                raise ProtocolError(ErrorCode.UNKNOWN_EVENT, f"unknown event: {e}")
            event_frames.append(frame)
        lobby_markets: dict[str, list[str]] = {}
        lobby_events: dict[str, list[Frame]] = {}
        ended: set[str] = set()  # Events that left their lobby (docs/protocol.md).
        for sport in lobbies:
            states = await self._store.events(sport)
            if not states:
                raise ProtocolError(ErrorCode.UNKNOWN_LOBBY, f"no events for sport {sport!r}")
            # An event that ended a while before the sport's newest news (the feed's own
            # clock, so a replay behaves as live) has left the lobby; one that has just
            # ended is still listed with its final books.
            newest = max(s.ts for s in states)
            ended.update(
                s.event_id for s in states if s.phase == "ended" and s.ts < newest - LOBBY_LINGER_MS
            )
            lobby_events[sport] = [
                self._relay.event_frame(s) for s in states if s.event_id not in ended
            ]
        held: list[str] = []
        try:
            # Channels first, then the books they carry: no delta can fall in between.
            for channel in (
                *(market_channel(m) for m in markets),
                *(event_channel(e) for e in events),
                *(lobby_channel(s) for s in lobbies),
            ):
                await self._relay.acquire(channel)
                held.append(channel)
            if positions:
                gone = await self._ensure_known(markets)
                for m in gone:
                    await self._relay.release(market_channel(m))
                    held.remove(market_channel(m))
                markets = [m for m in markets if m not in gone]
            else:
                await self._relay.ensure(markets)
            event_markets = {e: await self._store.market_ids(e) for e in events}
            for ids in event_markets.values():
                await self._ensure_known(ids)
            for sport in lobbies:
                lobby_markets[sport] = await self._store.lobby(sport)
                await self._ensure_known(lobby_markets[sport])
        except UnknownMarket as exc:
            await self._release(held)
            raise ProtocolError(ErrorCode.UNKNOWN_MARKET, str(exc)) from None
        except BaseException:
            await self._release(held)
            raise
        # A resumed market that an event or lobby of the same command covers belongs to
        # that subscription, not to the market list.
        covered = [m for m in markets if m in positions and self._covered(m, events, lobbies)]
        direct = [m for m in markets if m not in covered]
        # From here on nothing awaits: acknowledgement, snapshots and attachments are one
        # atomic step with respect to the fan-out. Positioned markets are resumed after.
        self.send(
            Ack(
                command=command,
                id=command_id,
                markets=tuple(markets),
                events=tuple(events),
                lobbies=tuple(lobbies),
            )
        )
        deferred: list[tuple[Position, str]] = []

        def attach(m: str, reason: str) -> None:
            if m in positions and not self._relay.hub.is_attached(m, self):
                deferred.append((positions[m], reason))
            else:
                self._attach(m, reason)

        hub = self._relay.hub
        for m in direct:
            self.markets.add(m)
            attach(m, "m")
        for e, frame in zip(events, event_frames, strict=True):
            self.events.add(e)
            hub.watch_event(e, self)
            self.offer(frame)
            for m in self._known(event_markets[e], self._relay.markets_of_event(e)):
                attach(m, f"e:{e}")
        for sport in lobbies:
            self.lobbies.add(sport)
            hub.watch_lobby(sport, self)
            for frame in lobby_events[sport]:
                self.offer(frame)
            retired = []
            for m in self._known(lobby_markets[sport], self._relay.markets_of_lobby(sport)):
                if self._relay.event_of(m) in ended:
                    retired.append(m)
                else:
                    attach(m, f"l:{sport}")
            self._relay.forget_unwatched(retired)
        resumed: set[str] = set()
        for position, reason in deferred:
            if position.market_id not in resumed:
                resumed.add(position.market_id)
                await self._resume_one(position, reason)
        await self._release([market_channel(m) for m in covered])

    def _covered(self, market_id: str, events: list[str], lobbies: list[str]) -> bool:
        snap = self._relay.current(market_id)
        if snap is None:
            return False
        return snap.event_id in events or (snap.main and snap.sport in lobbies)

    async def _ensure_known(self, ids: list[str]) -> list[str]:
        """Load the books of markets that storage listed; returns those that vanished."""
        try:
            await self._relay.ensure(ids)
        except UnknownMarket as exc:
            rest = [m for m in ids if m not in exc.market_ids]
            if rest:
                await self._relay.ensure(rest)
            return exc.market_ids
        return []

    def _known(self, *groups: Iterable[str]) -> list[str]:
        ids = dict.fromkeys(m for group in groups for m in group)
        return [m for m in ids if self._relay.current(m) is not None]

    def _attach(self, market_id: str, reason: str) -> None:
        frame = self._relay.attach(market_id, self, reason)
        if frame is not None:
            self.offer(frame)

    # -- unsubscribe -----------------------------------------------------------------------------

    async def _unsubscribe(self, cmd: Unsubscribe) -> None:
        hub = self._relay.hub
        left: list[str] = []
        channels: list[str] = []
        for m in cmd.markets:
            if m in self.markets:
                self.markets.discard(m)
                if hub.detach(m, self, "m"):
                    left.append(m)
                channels.append(market_channel(m))
        for names, held, unwatch, channel_of in (
            (cmd.events, self.events, hub.unwatch_event, event_channel),
            (cmd.lobbies, self.lobbies, hub.unwatch_lobby, lobby_channel),
        ):
            for name in names:
                if name in held:
                    held.discard(name)
                    unwatch(name, self)
                    channel = channel_of(name)
                    left += hub.release(self, channel)
                    channels.append(channel)
        self._relay.forget_unwatched(left)
        self.send(
            Ack(
                command="unsubscribe",
                id=cmd.id,
                markets=cmd.markets,
                events=cmd.events,
                lobbies=cmd.lobbies,
            )
        )
        await self._release(channels)

    # -- resume ----------------------------------------------------------------------------------

    async def _resume(self, cmd: Resume, resumed: list[Position]) -> None:
        """Re-attach each market from the client's position (``resumed``: the command's,
        see :meth:`_positions`): the missed deltas from history when they are all there,
        else a snapshot flagged ``reset``; events and lobbies of the command are
        subscribed as by ``subscribe``."""
        positions = {p.market_id: p for p in resumed}
        hub = self._relay.hub
        # Markets this connection already streams (a client that saw a gap) restart from
        # the client's position, keeping why they are subscribed.
        again = {m: hub.reasons(m, self) for m in positions if hub.is_attached(m, self)}
        for m, reasons in again.items():
            for reason in reasons:
                hub.detach(m, self, reason)
            await self._resume_one(positions.pop(m), *reasons)
        await self._open("resume", cmd.id, positions, cmd.events, cmd.lobbies, positions)

    def _positions(self, cmd: Resume) -> list[Position]:
        """The positions ``resume`` names: its resume token's (a REST snapshot's or an
        SSE stream's), then its explicit ones, which win. An unreadable token adds
        nothing (those markets start from snapshots). Raises :class:`ProtocolError`
        (``invalid``) past ``max_resume_markets`` markets."""
        limit = self._quotas.max_resume_markets
        from_token: list[Position] = []
        if cmd.token is not None:
            with contextlib.suppress(TokenError):
                from_token = decode_token(cmd.token, limit)
        positions = {p.market_id: p for p in (*from_token, *cmd.positions)}
        if len(positions) > limit:
            raise ProtocolError(ErrorCode.INVALID, f"at most {limit} markets per resume")
        return list(positions.values())

    async def _resume_one(self, p: Position, *reasons: str) -> None:
        m = p.market_id
        for _ in range(_RESUME_ATTEMPTS):
            current = self._relay.current(m)
            if current is None or current.epoch != p.epoch or p.seq > current.seq:
                break
            missed: list[bytes] = []
            if p.seq < current.seq:
                fetched = await self._store.history(m, p.epoch, p.seq)
                if fetched is None:
                    break
                missed = fetched
            current = self._relay.current(m)
            if current is None:
                break
            # No await from here: replay up to the relay's current seq, then attach, so
            # the next delta the hub fans out is exactly the one after the replay.
            deltas = [
                (d, b)
                for b in missed
                if isinstance(d := protocol.decode_server(b), Delta) and d.seq <= current.seq
            ]
            if (deltas[-1][0].seq if deltas else p.seq) < current.seq:
                continue  # More arrived while history was fetched; fetch again.
            # The first message of the market after the position goes out as it is, so
            # the client sees its resume continue; conflation may merge what follows.
            self.outbox.pin(m)
            for delta, payload in deltas:
                self.offer(Frame(delta, payload))
            for reason in reasons:
                self._relay.hub.attach(m, self, reason)
            self._stats.resumes_exact += 1
            return
        # Not resumable exactly: a fresh snapshot, flagged so the client drops its copy.
        self._stats.resumes_reset += 1
        for reason in reasons:
            self._relay.hub.attach(m, self, reason)
        snap = self._relay.current(m)
        if snap is not None:
            self.offer(Frame(protocol.as_reset(snap)))

    # -- drain -------------------------------------------------------------------------------------

    def drain(self, reason: str, after_ms: int, code: CloseCode = CloseCode.GOING_AWAY) -> None:
        """Tell the client to reconnect elsewhere, with where each of its markets stands,
        then close with ``code`` once everything buffered is sent. Detaching first makes
        the positions exact: every frame up to them is already in the outbox, and nothing
        follows."""
        hub = self._relay.hub
        positions = tuple(
            protocol.Position(market_id=m, epoch=snap.epoch, seq=snap.seq)
            for m in hub.markets_of(self)
            if (snap := self._relay.current(m)) is not None
        )
        self._relay.forget_unwatched(hub.drop(self))
        self.send(protocol.Reconnect(reason=reason, after_ms=after_ms, positions=positions))
        self._end(code)

    def _end(self, code: CloseCode) -> None:
        """Stop delivering, and have the transport close with ``code`` once what is
        buffered is sent."""
        self.close_code = code
        self._relay.forget_unwatched(self._relay.hub.drop(self))
        self.outbox.finish()

    # -- teardown --------------------------------------------------------------------------------

    async def close(self) -> None:
        """Detach from everything and release the broker channels (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        self.outbox.close()
        left = self._relay.hub.drop(self)
        self._relay.forget_unwatched(left)
        channels = [
            *(market_channel(m) for m in self.markets),
            *(event_channel(e) for e in self.events),
            *(lobby_channel(s) for s in self.lobbies),
        ]
        self.markets.clear()
        self.events.clear()
        self.lobbies.clear()
        await self._release(channels)

    async def _release(self, channels: list[str]) -> None:
        for channel in channels:
            await self._relay.release(channel)
