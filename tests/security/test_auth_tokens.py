"""Access tokens (server.auth): signatures, claims, channel patterns, JWKS rotation,
tickets, and the settings that stop a gateway without a key."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from oddstream.options import DevSettings, GatewaySettings, load
from protocol import ErrorCode, ProtocolError
from server.auth import Authenticator, Grant, Tickets
from server.settings import Settings, SettingsError
from tests.security.session_helpers import (
    AUDIENCE,
    ISSUER,
    SECRET,
    ec_key,
    hs256,
    jwk_of,
    jwks_server,
    rsa_key,
    signed,
)


def _jwt_settings(**overrides: Any) -> Settings:
    return Settings(**{"auth": "jwt", "jwt_key": SECRET, **overrides})


async def _refusal(auth: Authenticator, token: str) -> tuple[str, str]:
    with pytest.raises(ProtocolError) as caught:
        await auth.verify(token)
    return caught.value.code, caught.value.message


@pytest.mark.parametrize(
    ("pattern", "allowed", "refused"),
    [
        ("event:*", ["event:fb-1", "event:"], ["market:fb-1:1x2", "lobby:football"]),
        ("market:fb-*", ["market:fb-1:1x2"], ["market:tn-1:ml", "event:fb-1"]),
        ("lobby:football", ["lobby:football"], ["lobby:football2", "lobby:tennis"]),
        ("market:*:1x2", ["market:fb-1:1x2"], ["market:fb-1:ou_2.5"]),
        ("market:a.b", ["market:a.b"], ["market:axb"]),  # Not a regular expression.
        ("*", ["market:x", "event:y", "lobby:z"], []),
    ],
)
def test_channel_patterns(pattern: str, allowed: list[str], refused: list[str]) -> None:
    grant = Grant.of([pattern], "s")
    assert all(grant.allows(c) for c in allowed)
    assert not any(grant.allows(c) for c in refused)


@pytest.mark.parametrize(
    "patterns",
    [["fb-1"], ["market:*a*b*c"], ["market:" + "m" * 300], [f"event:{i}" for i in range(257)]],
)
def test_patterns_beyond_the_limits_are_refused(patterns: list[str]) -> None:
    with pytest.raises(ValueError, match="pattern"):
        Grant.of(patterns)


async def test_hs256_token_grants_its_channels_and_the_anonymous_ones() -> None:
    auth = Authenticator(_jwt_settings(anonymous="lobby:*"))
    grant = await auth.verify(hs256("p-1", ["event:fb-1"]))
    assert grant.subject == "p-1"
    assert grant.allows("event:fb-1") and grant.allows("lobby:tennis")
    assert not grant.allows("event:fb-2")
    assert grant.expires_at is not None and grant.expires_at > time.time()


@pytest.mark.parametrize(
    ("token", "code", "says"),
    [
        (hs256(key="another-secret-of-forty-characters-long!!"), "token_invalid", "signature"),
        (hs256(exp_in=-10), "token_expired", "expired"),
        (jwt.encode({"sub": "p"}, SECRET, algorithm="HS256"), "token_invalid", "exp"),
        (jwt.encode({"exp": time.time() + 60}, SECRET, algorithm="HS256"), "token_invalid", "sub"),
        (
            jwt.encode({"sub": "p", "exp": time.time() + 60}, None, algorithm="none"),
            "token_invalid",
            "",
        ),
        (hs256(channels=["fb-1"]), "token_invalid", "names no"),
        (hs256(channels="event:*"), "token_invalid", "list"),  # type: ignore[arg-type]
        ("not.a.token", "token_invalid", ""),
        ("x" * 20_000, "token_invalid", "too long"),
    ],
    ids=[
        "forged",
        "expired",
        "no-exp",
        "no-sub",
        "alg-none",
        "bad-pattern",
        "bad-claim",
        "garbage",
        "long",
    ],
)
async def test_bad_tokens_are_refused_with_their_code(token: str, code: str, says: str) -> None:
    refused = await _refusal(Authenticator(_jwt_settings()), token)
    assert refused[0] == code
    assert says in refused[1]
    assert token not in refused[1]


async def test_audience_and_issuer_are_checked_when_configured() -> None:
    auth = Authenticator(_jwt_settings(jwt_audience=AUDIENCE, jwt_issuer=ISSUER))
    good = hs256(aud=AUDIENCE, iss=ISSUER)
    assert (await auth.verify(good)).subject == "punter-1"
    assert await _refusal(auth, hs256(aud="other", iss=ISSUER)) == (
        "token_invalid",
        "wrong audience",
    )
    assert await _refusal(auth, hs256(aud=AUDIENCE, iss="https://evil/")) == (
        "token_invalid",
        "wrong issuer",
    )
    assert (await _refusal(auth, hs256(iss=ISSUER)))[0] == "token_invalid"  # No aud at all.


@pytest.mark.parametrize(("make", "algorithm"), [(rsa_key, "RS256"), (ec_key, "ES256")])
async def test_pem_public_key_file(tmp_path: Path, make: Any, algorithm: str) -> None:
    private = make()
    pem = tmp_path / "issuer.pem"
    pem.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    auth = Authenticator(_jwt_settings(jwt_key=str(pem)))
    assert (await auth.verify(signed(private, algorithm))).subject == "punter-1"
    assert (await _refusal(auth, signed(make(), algorithm)))[1] == "bad signature"
    # An HS256 token signed with the public key's text must not pass (algorithm confusion).
    assert (await _refusal(auth, jwt.encode({"sub": "p", "exp": 2**31}, SECRET)))[0] == (
        "token_invalid"
    )


async def test_jwks_rotation_refetches_on_an_unknown_kid_at_most_once_per_interval() -> None:
    old, new = ec_key(), rsa_key()
    with jwks_server() as issuer:
        issuer.keys = [jwk_of(old, "k1", "ES256")]
        auth = Authenticator(Settings(auth="jwt", jwks_url=issuer.url, jwks_refetch_s=0))
        assert (await auth.verify(signed(old, "ES256", "k1"))).subject == "punter-1"
        assert (await auth.verify(signed(old, "ES256", "k1"))).subject == "punter-1"
        assert issuer.requests == 1  # Cached.
        issuer.keys = [jwk_of(old, "k1", "ES256"), jwk_of(new, "k2", "RS256")]  # Rotation.
        assert (await auth.verify(signed(new, "RS256", "k2"))).subject == "punter-1"
        assert issuer.requests == 2
        assert await _refusal(auth, signed(new, "RS256")) == (
            "token_invalid",
            "token header names no key (kid)",
        )
        slow = Authenticator(Settings(auth="jwt", jwks_url=issuer.url, jwks_refetch_s=3600))
        before = issuer.requests
        for i in range(50):  # Random kids: one fetch, not fifty.
            refused = await _refusal(slow, signed(new, "RS256", f"random-{i}"))
            assert refused == ("token_invalid", "token signed by an unknown key")
        assert issuer.requests == before + 1


async def test_unreachable_jwks_is_unavailable() -> None:
    with jwks_server() as issuer:
        url = issuer.url
    auth = Authenticator(Settings(auth="jwt", jwks_url=url))
    assert (await _refusal(auth, signed(ec_key(), "ES256", "k1")))[0] == ErrorCode.UNAVAILABLE


def test_tickets_are_single_use_and_short_lived() -> None:
    now = [100.0]
    tickets = Tickets(ttl_s=30, clock=lambda: now[0])
    grant = Grant.of(["event:*"], "p")
    first, second = tickets.issue(grant), tickets.issue(grant)
    assert tickets.redeem(first) is grant
    with pytest.raises(ProtocolError, match="unknown, used or expired"):
        tickets.redeem(first)
    now[0] += 30
    with pytest.raises(ProtocolError):
        tickets.redeem(second)


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"auth": "jwt"}, "--jwt-key"),
        ({"auth": "jwt", "jwt_key": "short"}, "--jwt-key"),
        ({"auth": "jwt", "jwt_key": "/nonexistent/issuer.pem"}, "--jwt-key"),
        ({"auth": "basic"}, "--auth"),
        ({"command_rate": 0}, "--command-rate"),
        ({"max_resume_markets": 0}, "--max-resume-markets"),
        ({"jwks_url": "ftp://x"}, "--jwks-url"),
    ],
)
def test_bad_security_settings_name_the_flag(values: dict[str, Any], names: str) -> None:
    flags = {"redis": "redis://127.0.0.1:1/0", **values}
    with pytest.raises(SettingsError, match=names):
        load(GatewaySettings, flags, {})


def test_gateway_defaults_to_jwt_dev_to_none() -> None:
    # `oddstream gateway` without a key stops start-up: tests/component/test_cli.py.
    assert load(DevSettings, {}, {}).server.auth == "none"
    redis = {"redis": "redis://127.0.0.1:1/0"}
    assert load(GatewaySettings, {**redis, "jwt_key": SECRET}, {}).server.auth == "jwt"
    assert load(GatewaySettings, redis, {"ODDSTREAM_AUTH": "none"}).server.auth == "none"
