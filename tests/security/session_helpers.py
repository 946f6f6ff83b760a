"""Shared pieces of the security tests: crafted resume tokens, in-process memory
measurement (``/proc``), signed access tokens and a JWKS server on 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from server.resume_token import _varint

#: An HS256 secret long enough for RFC 7518.
SECRET = "a-development-secret-of-forty-characters!"
AUDIENCE = "oddstream"
ISSUER = "https://id.example.test/"


def crafted_token(n: int, length: int, *, seq_bytes: int | None = None) -> str:
    """A version-1 resume token of ``n`` positions whose market ids and epochs reuse the
    previous one whole and add one character: the first is ``length`` characters of
    ``a``, so the ids ask for about ``2 * n * length`` characters once front-coding is
    undone, from a deflated layout of a few hundred bytes. ``seq_bytes`` one-byte seqs
    (default ``n``)."""
    column = bytearray(_varint(0) + _varint(length) + b"a" * length)
    for _ in range(n - 1):
        column += _varint(length) + _varint(1) + b"b"
    raw = bytes(column) * 2
    layout = zlib.compress(raw, 9, wbits=-15)
    head = bytes((1,)) + _varint(n) + bytes((1,)) + _varint(len(layout)) + layout
    head += b"\0" * (-len(head) % 3)
    body = head + b"\x01" * (n if seq_bytes is None else seq_bytes)
    return base64.urlsafe_b64encode(body).rstrip(b"=").decode()


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise LookupError(key)


@dataclass
class Measured:
    """Wall time, this process's CPU time (the work done, whatever else the shared
    machine runs) and peak resident-memory growth of a block (see :func:`measure`)."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    rss_growth_bytes: int = 0


@contextlib.contextmanager
def measure() -> Iterator[Measured]:
    """Time a block and the growth of this process's peak RSS over it: the kernel's peak
    (``VmHWM``) is reset first (``/proc/self/clear_refs``), so the figure is the block's
    own high-water mark, freed memory included."""
    Path("/proc/self/clear_refs").write_bytes(b"5")
    before = _status_kb("VmRSS")
    out = Measured()
    start, cpu = time.perf_counter(), time.process_time()
    try:
        yield out
    finally:
        out.seconds = time.perf_counter() - start
        out.cpu_seconds = time.process_time() - cpu
        out.rss_growth_bytes = (_status_kb("VmHWM") - before) * 1024


def hs256(
    sub: str = "punter-1",
    channels: list[str] | None = None,
    *,
    exp_in: float = 86_400,
    key: str = SECRET,
    **claims: Any,
) -> str:
    """An HS256 access token (``exp`` ``exp_in`` seconds from now: a day by default, as
    parametrized tokens are made when the suite is collected)."""
    payload = {"sub": sub, "exp": int(time.time() + exp_in), **claims}
    if channels is not None:
        payload["channels"] = channels
    return jwt.encode(payload, key, algorithm="HS256")


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def signed(private: Any, algorithm: str, kid: str | None = None, **payload: Any) -> str:
    claims = {"sub": "punter-1", "exp": int(time.time() + 86_400), **payload}
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, private, algorithm=algorithm, headers=headers)


def jwk_of(private: Any, kid: str, algorithm: str) -> dict[str, Any]:
    algo = jwt.get_algorithm_by_name(algorithm)
    public = json.loads(algo.to_jwk(private.public_key()))
    return {**public, "kid": kid, "alg": algorithm, "use": "sig"}


@dataclass
class JwksServer:
    """A JWKS document served on 127.0.0.1 from a thread; ``keys`` may change (rotation)
    and ``requests`` counts the fetches."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    url: str = ""


@contextlib.contextmanager
def jwks_server() -> Iterator[JwksServer]:
    state = JwksServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests += 1
            body = json.dumps({"keys": state.keys}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
