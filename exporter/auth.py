"""Who may ask: with API keys, whoever sends ``Authorization: Bearer <key>`` (the probes,
``/health`` and ``/ready``, need none); without keys, only this machine, over loopback.

``Access`` is pure ASGI rather than ``BaseHTTPMiddleware``, which runs the endpoint in a
task of its own and relays its body through a memory stream: that gets in the way of
streamed exports, event streams and the disconnects they watch for. A refused request never
reaches a route, so it takes no export slot and no database connection.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from exporter.config import Settings
from exporter.errors import ExporterError, LoopbackOnly, Unauthorized

OPEN_PATHS = frozenset({"/health", "/ready"})  # a load balancer's probes carry no key
LOOPBACK_NAMES = frozenset({"localhost"})  # RFC 6761 6.3: always the loopback interface
POLICY_VIOLATION = 1008  # the WebSocket close code for a refused handshake


def is_loopback(host: str) -> bool:
    """Whether ``host``, a name or an address, reaches this machine alone. Other names may
    resolve to anything, so they are not."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def listen_refusal(host: str, settings: Settings) -> str | None:
    """Why ``exporter serve`` must not listen on ``host`` with these settings, or None."""
    if settings.api_keys or settings.allow_open or is_loopback(host):
        return None
    return (
        f"refusing to listen on {host}, which is not a loopback address, without API keys: "
        "anyone who reaches it could read every export. Either set EXPORTER_API_KEYS=<key>"
        "[,<key>...] so that requests need `Authorization: Bearer <key>`, or set "
        "EXPORTER_ALLOW_OPEN=true if it is meant to be open (a port published on loopback "
        "only, or a proxy in front that authenticates)"
    )


class KeyRing:
    """The API keys. A key is compared with every one of them, each time, in constant time:
    how long it takes tells neither whether nor which key matched."""

    def __init__(self, keys: Iterable[str]) -> None:
        # Digests, not the keys: all of one length, so the time taken says nothing of a key's
        # length either (compare_digest returns at once on a length mismatch).
        self._digests = [_digest(key.encode("ascii")) for key in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def admits(self, key: bytes) -> bool:
        presented = _digest(key)
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(presented, digest)
        return found


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The key in the request's one ``Authorization: Bearer <key>`` header, or Unauthorized
    saying what is missing. The scheme is case-insensitive (RFC 9110 11.1)."""
    values = [value for name, value in headers if name == b"authorization"]
    if not values:
        raise Unauthorized(
            "no Authorization header; send `Authorization: Bearer <key>` with one of this "
            "service's API keys"
        )
    if len(values) > 1:
        raise Unauthorized(
            f"{len(values)} Authorization headers; send exactly one, "
            "`Authorization: Bearer <key>`",
            oauth_error="invalid_request",
        )
    scheme, _, token = values[0].strip().partition(b" ")
    if scheme.lower() != b"bearer":
        # Not quoted back: a client that sends the bare key has put it where the scheme goes.
        raise Unauthorized(
            "the Authorization header does not use the Bearer scheme; send "
            "`Authorization: Bearer <key>`"
        )
    token = token.strip(b" \t")
    if not token:
        raise Unauthorized(
            "the Authorization header says Bearer but holds no key; send "
            "`Authorization: Bearer <key>`",
            oauth_error="invalid_request",
        )
    return token


class Access:
    """The ASGI middleware in front of every route: the keys' check, or loopback only."""

    def __init__(self, app: ASGIApp, keys: Iterable[str] = (), allow_open: bool = False) -> None:
        self.app = app
        self.keys = KeyRing(keys)
        self.allow_open = allow_open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self.refusal(scope) if scope["type"] in ("http", "websocket") else None
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            response = JSONResponse(
                refusal.body(), status_code=refusal.status, headers=refusal.headers()
            )
            await response(scope, receive, send)
        else:  # closed before the handshake is accepted: the server answers it with a 403
            await send({"type": "websocket.close", "code": POLICY_VIOLATION,
                        "reason": refusal.code})

    def refusal(self, scope: Scope) -> ExporterError | None:
        if self.keys:
            if scope["path"] in OPEN_PATHS:
                return None
            try:
                token = bearer_token(scope["headers"])
            except Unauthorized as error:
                return error
            if self.keys.admits(token):
                return None
            return Unauthorized(
                "the key in the Authorization header is not one of this service's API keys",
                oauth_error="invalid_token",
            )
        if self.allow_open:
            return None
        # Defence in depth, for a server started some other way than `exporter serve` (which
        # refuses such an address): judge the address the request came in on, as the server
        # reports it. A name that is not an address (a unix socket's path, a test client's
        # host) is not judged.
        host = (scope.get("server") or ("",))[0] or ""
        if _is_address(host) and not is_loopback(host):
            return LoopbackOnly(host)
        return None


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
