"""The ingress's first layer: refuse a request before reading it.

An ASGI middleware around the FastAPI app (Ray Serve runs an app's ASGI middleware
stack; what it does not run is middleware added after ``@serve.ingress`` froze the app).
For every request it

1. finds the route's requirement (scope and rate-limit cost) from the request line alone,
2. authenticates the key, checks its scope and charges its rate-limit tokens: a request
   without a valid key is a 401 whatever its body, and nothing of that body is read,
3. refuses a declared ``Content-Length`` over the cap with 413 at once, and
4. counts the body as it streams in (chunked uploads declare no length): past the cap
   the read raises :class:`BodyTooLarge`, a 413, so no handler reads or spools more
   than ``max_body_bytes + one chunk``.

The principal it authenticated rides in the ASGI scope to the handler
(:func:`principal_of`), so keys are checked once per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

from starlette.exceptions import HTTPException

from pixlake.serve.auth import KeyStore, Principal, RateLimiter, ServeError

Scope = dict[str, Any]
Message = dict[str, Any]
PRINCIPAL = "pixlake.principal"  # ASGI scope key
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Requirement:
    """What a route demands before its body is read."""

    route: str  # the metrics label, e.g. /v1/items/{id}/thumbnail
    scope: str  # API-key scope
    cost: float  # rate-limit tokens


_REQUIREMENTS: list[tuple[re.Pattern, Optional[str], Requirement]] = []


def require(route: str, scope: str, cost: float = 1.0, method: Optional[str] = None) -> None:
    """Declare that ``route`` (a path template, ``{name}`` for one path segment) needs
    ``scope`` and costs ``cost`` rate-limit tokens; with ``method``, only for that method
    (``GET /v1/items/{id}`` and ``DELETE /v1/items/{id}`` need different scopes)."""
    pattern = re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(route)) + "$")
    _REQUIREMENTS.append((pattern, method, Requirement(route, scope, cost)))


def requirement(path: str, method: str = "GET") -> Optional[Requirement]:
    """The requirement of a request, or None for an open route (health, page, metrics). A
    method the route does not declare falls to the route's first requirement, so an unknown
    method on a guarded path is still authenticated before FastAPI answers 405."""
    matched = [(m, req) for pattern, m, req in _REQUIREMENTS if pattern.match(path)]
    for m, req in matched:
        if m is None or m == method:
            return req
    return matched[0][1] if matched else None


class BodyTooLarge(HTTPException):
    """The request body passed the cap while streaming in."""

    def __init__(self, cap: int):
        super().__init__(413, f"body over the {cap}-byte cap")


@dataclass
class GuardConfig:
    """What the guard checks against; the Ingress replica fills it in at start."""

    keys: KeyStore
    limiter: RateLimiter
    max_body_bytes: int
    observe: Callable[[str, str, int, float], None] = lambda route, method, status, seconds: None


def principal_of(scope: Scope) -> Principal:
    """The principal the guard authenticated for this request."""
    principal = scope.get(PRINCIPAL)
    if principal is None:  # a route without a requirement asked for one: a wiring mistake
        raise RuntimeError("route has no declared requirement (pixlake.serve.guard.require)")
    return principal


_CODES = {401: "unauthorized", 403: "forbidden", 413: "payload_too_large", 429: "rate_limited"}


class RequestGuard:
    """ASGI middleware: authenticate, authorise, rate-limit and cap the body before the app reads it."""

    config: Optional[GuardConfig] = None  # one ingress replica per process sets it

    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: Scope, receive, send) -> None:
        config = RequestGuard.config
        if scope["type"] != "http" or config is None:
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        req = requirement(scope.get("path", ""), scope.get("method", "GET"))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._check(config, req, scope, headers)
        if refusal is not None:
            status, message, extra = refusal
            config.observe(req.route if req else "unmatched", scope.get("method", "GET"), status,
                           time.perf_counter() - started)
            return await _send_error(send, status, message, extra)
        await self.app(scope, _capped(receive, config.max_body_bytes), send)

    @staticmethod
    def _check(config: GuardConfig, req: Optional[Requirement], scope: Scope,
               headers: dict[str, str]) -> Optional[tuple[int, str, dict]]:
        if req is not None:
            try:
                principal = config.keys.authenticate(headers.get("authorization"))
                principal.require(req.scope)
            except ServeError as e:
                return e.status_code, e.message, e.headers
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > config.max_body_bytes):
            return 413, f"body over the {config.max_body_bytes}-byte cap", {}
        if req is not None:
            try:
                config.limiter.check(principal.key_name, req.cost)
            except ServeError as e:
                return e.status_code, e.message, e.headers
            scope[PRINCIPAL] = principal
        return None


def _capped(receive, cap: int):
    """``receive`` that raises :class:`BodyTooLarge` once more than ``cap`` body bytes came in."""
    seen = 0

    async def capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > cap:
                raise BodyTooLarge(cap)
        return message

    return capped


async def _send_error(send, status: int, message: str, headers: dict) -> None:
    body = json.dumps({"error": _CODES.get(status, "http_error"), "message": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close")]  # the body was not read: the connection cannot be reused
    raw += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class ProxyBodyCap:
    """ASGI middleware for Ray Serve's HTTP proxy: never read a body past the cap.

    Serve's proxy reads a request body from the client as fast as it arrives and queues it
    for the replica, with no backpressure, so the replica's cap alone bounds what the app
    reads but not what the proxy buffers (a 300 MiB stream against a 16 MiB cap pulled
    80-120 MiB into it before the replica's 413 got back). Here the proxy passes on the
    chunk that crosses the cap (the replica's :class:`RequestGuard` answers 413 on seeing
    it) and then reads nothing more: the client's sends back up into its own socket until
    the answer comes and the proxy closes the request. The proxy never answers itself, so
    the status stays the replica's: 401 for a bad key, whatever the body.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], max_body_bytes: int):
        self.app, self.cap = app, max_body_bytes

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            if seen > self.cap:
                await asyncio.Event().wait()  # read no more; cancelled when the request ends
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
            return message

        await self.app(scope, capped, send)


PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"  # read by every Serve proxy at start
PROXY_CALLBACK = "pixlake.serve.guard:proxy_middlewares"
PROXY_CAP_ENV = "PIXLAKE_MAX_BODY_BYTES"
DEFAULT_PROXY_CAP = 16 * 1024 * 1024


def proxy_middlewares() -> list:
    """The Serve proxy's middlewares (Ray calls it in each proxy when ``PROXY_CALLBACK_ENV``
    names it; Ray 2.60 took ``http_options.middlewares`` away): :class:`ProxyBodyCap` at
    ``PIXLAKE_MAX_BODY_BYTES`` (default 16 MiB)."""
    from starlette.middleware import Middleware

    return [Middleware(ProxyBodyCap, max_body_bytes=proxy_cap() or DEFAULT_PROXY_CAP)]


def proxy_cap() -> Optional[int]:
    """The cap this cluster's Serve proxies apply, or None when they run without
    :class:`ProxyBodyCap` (the environment Ray started with says which)."""
    import os

    if os.environ.get(PROXY_CALLBACK_ENV) != PROXY_CALLBACK:
        return None
    return int(os.environ.get(PROXY_CAP_ENV, DEFAULT_PROXY_CAP))


def effective_cap(configured: int) -> int:
    """The app's body cap: never above the proxy's, or a body between the two would wait
    forever for bytes the proxy will not read."""
    cap = proxy_cap()
    if cap is not None and cap < configured:
        log.warning("max_body_bytes %d is above the Serve proxy's cap %d (%s): using %d",
                    configured, cap, PROXY_CAP_ENV, cap)
        return cap
    return configured
