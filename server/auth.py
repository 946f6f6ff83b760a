"""Access tokens and the channels they grant (``docs/auth.md``).

:class:`Authenticator` turns a JWT (or an SSE ticket) into a :class:`Grant`, the set of
channel patterns a connection may follow; :meth:`Authenticator.authorize` decides whether
a grant covers the markets, events and lobbies a request names. The session calls both
from :meth:`server.session.Session.authorize`, REST from its routes. Every refusal is an
:class:`~protocol.ProtocolError` with a documented code (``unauthorized``,
``token_invalid``, ``token_expired``, ``forbidden``, ``unavailable``), counted by code in
:attr:`Authenticator.refusals` (``oddstream_auth_refusals_total`` in ``/metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from protocol import ErrorCode, ProtocolError, Snapshot
from protocol.types import MAX_NAME_CHARS, MAX_TOKEN_CHARS
from server.settings import Settings, SettingsError

#: Patterns one grant may hold, and ``*`` per pattern (bounds the matching work).
MAX_PATTERNS = 256
MAX_STARS = 2
#: Shortest HS256 secret (RFC 7518 3.2: a key at least as long as the hash).
MIN_SECRET_CHARS = 32
#: Largest JWKS document fetched, and how long a fetch may take.
MAX_JWKS_BYTES = 1 << 20
JWKS_TIMEOUT_S = 5.0
#: Tickets outstanding at once per gateway.
MAX_TICKETS = 10_000
#: The codes of an auth refusal: the fixed label values of ``oddstream_auth_refusals_total``.
REFUSAL_CODES = (
    ErrorCode.UNAUTHORIZED,
    ErrorCode.FORBIDDEN,
    ErrorCode.TOKEN_INVALID,
    ErrorCode.TOKEN_EXPIRED,
    ErrorCode.UNAVAILABLE,
)
_PREFIXES = ("market:", "event:", "lobby:")
_BEARER = "bearer "


def _refused(code: ErrorCode, message: str) -> ProtocolError:
    return ProtocolError(code, message)


@dataclass(frozen=True, slots=True)
class Grant:
    """What one connection may follow: channel ``patterns`` (``*``: any run of
    characters), until ``expires_at`` (epoch seconds; None: no expiry). ``subject`` is the
    token's ``sub``, None for an anonymous grant."""

    patterns: tuple[str, ...]
    subject: str | None = None
    expires_at: float | None = None
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(
        cls, patterns: Iterable[str], subject: str | None = None, expires_at: float | None = None
    ) -> Grant:
        """A grant of ``patterns``. Raises :class:`ValueError` for a pattern that names no
        kind of channel, or past the limits on count, length and ``*``."""
        kept = tuple(dict.fromkeys(patterns))
        if len(kept) > MAX_PATTERNS:
            raise ValueError(f"more than {MAX_PATTERNS} channel patterns")
        for p in kept:
            if len(p) > MAX_NAME_CHARS or p.count("*") > MAX_STARS:
                raise ValueError(f"channel pattern too long or with more than {MAX_STARS} '*'")
            if p != "*" and not p.startswith(_PREFIXES):
                raise ValueError(f"channel pattern {p[:40]!r} names no market:, event: or lobby:")
        regex = "|".join(".*".join(re.escape(part) for part in p.split("*")) for p in kept)
        return cls(kept, subject, expires_at, re.compile(regex) if kept else None)

    @property
    def everything(self) -> bool:
        return "*" in self.patterns

    def allows(self, channel: str) -> bool:
        return self._regex is not None and self._regex.fullmatch(channel) is not None

    def allows_market(self, market_id: str, event_id: str, sport: str, main: bool) -> bool:
        """A market is covered by its own channel, its event's, or (a main market) its
        sport's lobby."""
        return (
            self.allows(f"market:{market_id}")
            or self.allows(f"event:{event_id}")
            or (main and self.allows(f"lobby:{sport}"))
        )


#: The grant of ``--auth none``.
EVERYTHING = Grant.of(["*"])

#: Books of markets by id, for markets granted through their event or lobby (relay or
#: storage); markets it does not know are left out.
BookLookup = Callable[[list[str]], Awaitable[Mapping[str, Snapshot]]]


def _denied(grant: Grant, channel: str) -> ProtocolError:
    if grant.subject is None:
        return _refused(ErrorCode.UNAUTHORIZED, f"{channel} needs an access token (send auth)")
    return _refused(ErrorCode.FORBIDDEN, f"the token does not grant {channel}")


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value (None without)."""
    if authorization is None or authorization[:7].lower() != _BEARER:
        return None
    return authorization[7:].strip() or None


#: A WebSocket subprotocol entry carrying an access token (browsers cannot set headers).
TOKEN_SUBPROTOCOL = "oddstream.token."  # noqa: S105 - a prefix, not a secret


def subprotocol_token(subprotocols: Iterable[str]) -> str | None:
    """The token of the first ``oddstream.token.<jwt>`` subprotocol entry, if any."""
    for entry in subprotocols:
        if entry.startswith(TOKEN_SUBPROTOCOL):
            return entry[len(TOKEN_SUBPROTOCOL) :] or None
    return None


def _fetch(url: str) -> bytes:
    """GET ``url`` (the JWKS), at most :data:`MAX_JWKS_BYTES`, within the timeout."""
    with urllib.request.urlopen(url, timeout=JWKS_TIMEOUT_S) as response:  # noqa: S310
        body: bytes = response.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError("JWKS larger than 1 MiB")
    return body


class Jwks:
    """The issuer's signing keys by ``kid``, fetched on first use and again when a token
    names a key not held, at most once every ``refetch_s`` (rotation without letting
    random ``kid`` values make a fetch each)."""

    def __init__(
        self,
        url: str,
        refetch_s: float,
        fetch: Callable[[str], bytes] = _fetch,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._url = url
        self._refetch_s = refetch_s
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str) -> jwt.PyJWK:
        """The key ``kid``. Raises :class:`ProtocolError` ``token_invalid`` for a key the
        issuer does not publish, ``unavailable`` when the JWKS cannot be fetched."""
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            fetched = self._fetched_at
            if kid not in self._keys and (
                fetched is None or self._clock() - fetched >= self._refetch_s
            ):
                await self._refetch()
        found = self._keys.get(kid)
        if found is None:
            raise _refused(ErrorCode.TOKEN_INVALID, "token signed by an unknown key")
        return found

    async def _refetch(self) -> None:
        self._fetched_at = self._clock()
        self.fetches += 1
        try:
            body = await asyncio.to_thread(self._fetch, self._url)
            keys = jwt.PyJWKSet.from_dict(json.loads(body)).keys
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise _refused(ErrorCode.UNAVAILABLE, f"issuer keys unavailable: {exc}") from None
        self._keys = {k.key_id: k for k in keys if k.key_id}


class Tickets:
    """Single-use SSE tickets (``POST /v1/tickets``): each stands for a grant for
    ``ttl_s`` seconds, in this gateway's memory, bounded."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self._ttl_s = ttl_s
        self._clock = clock
        self._issued: dict[str, tuple[float, Grant]] = {}

    def issue(self, grant: Grant) -> str:
        """A new ticket for ``grant``. Raises :class:`ProtocolError` ``rate_limited`` when
        :data:`MAX_TICKETS` unexpired tickets are outstanding."""
        now = self._clock()
        if len(self._issued) >= MAX_TICKETS:
            self._issued = {t: v for t, v in self._issued.items() if v[0] > now}
            if len(self._issued) >= MAX_TICKETS:
                raise _refused(ErrorCode.RATE_LIMITED, "too many tickets outstanding")
        ticket = secrets.token_urlsafe(24)
        self._issued[ticket] = (now + self._ttl_s, grant)
        return ticket

    def redeem(self, ticket: str) -> Grant:
        """The grant of ``ticket``, which is used up. Raises :class:`ProtocolError`
        ``token_invalid`` for an unknown, used or expired ticket."""
        entry = self._issued.pop(ticket, None)
        if entry is None or entry[0] <= self._clock():
            raise _refused(ErrorCode.TOKEN_INVALID, "unknown, used or expired ticket")
        return entry[1]


def load_key(value: str) -> tuple[Any, tuple[str, ...]]:
    """The verification key of ``--jwt-key`` and its algorithms: a PEM public key file
    (RSA: RS256, EC: ES256) or an HS256 secret. Raises :class:`SettingsError`."""
    path = Path(value)
    if value.endswith(".pem") or value.startswith(("/", "./")):
        try:
            key = load_pem_public_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise SettingsError(f"--jwt-key / ODDSTREAM_JWT_KEY: no PEM key: {exc}") from None
        if isinstance(key, RSAPublicKey):
            return key, ("RS256",)
        if isinstance(key, EllipticCurvePublicKey):
            return key, ("ES256",)
        raise SettingsError("--jwt-key / ODDSTREAM_JWT_KEY: an RSA or EC public key is needed")
    if len(value) < MIN_SECRET_CHARS:
        raise SettingsError(
            f"--jwt-key / ODDSTREAM_JWT_KEY: an HS256 secret needs {MIN_SECRET_CHARS}+ characters"
        )
    return value, ("HS256",)


class Authenticator:
    """The gateway's rules for tokens, from its settings (built once at start-up; raises
    :class:`SettingsError` for an unusable key)."""

    def __init__(self, settings: Settings, fetch: Callable[[str], bytes] = _fetch):
        self.required = settings.auth == "jwt"
        patterns = [p.strip() for p in settings.anonymous.split(",") if p.strip()]
        try:
            self.anonymous = Grant.of(patterns) if self.required else EVERYTHING
        except ValueError as exc:
            raise SettingsError(f"--anonymous / ODDSTREAM_ANONYMOUS: {exc}") from None
        self._key: Any = None
        self._algorithms: tuple[str, ...] = ("RS256", "ES256")
        self._jwks: Jwks | None = None
        if self.required and settings.jwt_key:
            self._key, self._algorithms = load_key(settings.jwt_key)
        elif self.required:
            self._jwks = Jwks(settings.jwks_url, settings.jwks_refetch_s, fetch)
        self._audience = settings.jwt_audience or None
        self._issuer = settings.jwt_issuer or None
        self.tickets = Tickets(settings.ticket_ttl_s)
        self.refusals: dict[str, int] = dict.fromkeys(REFUSAL_CODES, 0)
        """Refusals so far, by code (``REFUSAL_CODES``)."""

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        """Count a refusal raised in the block by its code."""
        try:
            yield
        except ProtocolError as exc:
            if exc.code in self.refusals:
                self.refusals[exc.code] += 1
            raise

    async def authorize(
        self,
        grant: Grant,
        markets: Iterable[str],
        events: Iterable[str],
        lobbies: Iterable[str],
        books: BookLookup,
    ) -> None:
        """Raise :class:`ProtocolError` (``forbidden``, or ``unauthorized`` for an
        anonymous grant; counted) unless ``grant`` covers every name (a market:
        :meth:`Grant.allows_market`)."""
        with self._counted():
            if grant.everything:
                return
            for channel in (*(f"event:{e}" for e in events), *(f"lobby:{s}" for s in lobbies)):
                if not grant.allows(channel):
                    raise _denied(grant, channel)
            unnamed = [m for m in dict.fromkeys(markets) if not grant.allows(f"market:{m}")]
            if not unnamed:
                return
            known = await books(unnamed)
            for m in unnamed:
                book = known.get(m)
                if book is None or not grant.allows_market(m, book.event_id, book.sport, book.main):
                    raise _denied(grant, f"market:{m}")

    @property
    def jwks(self) -> Jwks | None:
        return self._jwks

    async def verify(self, token: str) -> Grant:
        """The grant of a JWT. Raises :class:`ProtocolError`: ``token_expired``,
        ``token_invalid`` (the message says which check failed), ``unavailable``."""
        with self._counted():
            return await self._verify(token)

    async def _verify(self, token: str) -> Grant:
        if not self.required:
            return EVERYTHING
        if len(token) > MAX_TOKEN_CHARS:
            raise _refused(ErrorCode.TOKEN_INVALID, "token too long")
        key = self._key
        try:
            if self._jwks is not None:
                kid = jwt.get_unverified_header(token).get("kid")
                if not isinstance(kid, str):
                    raise _refused(ErrorCode.TOKEN_INVALID, "token header names no key (kid)")
                key = await self._jwks.key(kid)
            claims = jwt.decode(
                token,
                key,
                algorithms=list(self._algorithms),
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise _refused(ErrorCode.TOKEN_EXPIRED, "token expired") from None
        except jwt.InvalidAudienceError:
            raise _refused(ErrorCode.TOKEN_INVALID, "wrong audience") from None
        except jwt.InvalidIssuerError:
            raise _refused(ErrorCode.TOKEN_INVALID, "wrong issuer") from None
        except jwt.InvalidSignatureError:
            raise _refused(ErrorCode.TOKEN_INVALID, "bad signature") from None
        except jwt.PyJWTError as exc:
            raise _refused(ErrorCode.TOKEN_INVALID, f"invalid token: {exc}") from None
        return _grant_of(claims, self.anonymous.patterns)

    async def credentials(
        self, authorization: str | None, ticket: str | None, subprotocols: Iterable[str] = ()
    ) -> Grant:
        """The grant of a request's ``Authorization: Bearer`` header, WebSocket
        subprotocol entry ``oddstream.token.<jwt>`` or SSE ``ticket``; the anonymous grant
        without any."""
        token = bearer(authorization) or subprotocol_token(subprotocols)
        if token is not None:
            return await self.verify(token)
        if ticket is not None and self.required:
            with self._counted():
                return self.tickets.redeem(ticket)
        return self.anonymous


def _grant_of(claims: Mapping[str, Any], anonymous: tuple[str, ...]) -> Grant:
    """The grant of verified claims, plus what anyone may follow."""
    channels = claims.get("channels", [])
    subject = claims["sub"]
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise _refused(ErrorCode.TOKEN_INVALID, "channels must be a list of strings")
    if not isinstance(subject, str):
        raise _refused(ErrorCode.TOKEN_INVALID, "sub must be a string")
    try:
        return Grant.of([*channels, *anonymous], subject, float(claims["exp"]))
    except ValueError as exc:
        raise _refused(ErrorCode.TOKEN_INVALID, str(exc)) from None
