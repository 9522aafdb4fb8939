"""API-key authentication, scope checks and per-key rate limiting for the Serve API.

A key carries one tenant and a set of scopes. Keys are held only as sha256 hex digests:
the env format is parsed straight into hashes, and a serve config file can list hashes
so production configs never contain a plaintext key.

The HTTP layer maps the exceptions here onto responses: each carries ``status_code``,
``message`` and ``headers`` (``WWW-Authenticate`` for 401, ``Retry-After`` for 429).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pixlake.platform.errors import PixlakeError

log = logging.getLogger(__name__)

SCOPES = frozenset({"search", "embed", "ingest", "delete", "erase", "admin"})
ENV_VAR = "PIXLAKE_API_KEYS"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class AuthConfigError(PixlakeError):
    """The API-key configuration is invalid; the message names the bad entry (never the key)."""


class ServeError(PixlakeError):
    """An error a client caused, carrying the HTTP status the Serve app answers with.

    Args:
        message: human-readable reason, safe to return to the client.
    """

    status_code: int = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        """Extra response headers the status requires (none by default)."""
        return {}


class Unauthorized(ServeError):
    """No credentials, a malformed ``Authorization`` header, or an unknown key (HTTP 401)."""

    status_code = 401

    @property
    def headers(self) -> dict[str, str]:
        # RFC 7235 requires a challenge on every 401.
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(ServeError):
    """The key is valid but lacks the scope the route needs (HTTP 403)."""

    status_code = 403


class RateLimited(ServeError):
    """The key has used up its token bucket (HTTP 429).

    Args:
        retry_after_s: whole seconds until the next request can succeed (at least 1).
    """

    status_code = 429

    def __init__(self, retry_after_s: int):
        self.retry_after_s = max(1, int(retry_after_s))
        super().__init__(f"rate limit exceeded; retry after {self.retry_after_s} s")

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


def hash_key(key: str) -> str:
    """The stored form of an API key.

    Args:
        key: the plaintext key.

    Returns:
        sha256 hex digest (64 lowercase hex characters).
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeyRecord(BaseModel):
    """One configured API key, held by hash only.

    Built from a serve config entry (``{"key_hash": ..., "tenant": ..., "scopes": [...]}``)
    or from a plaintext key with :meth:`from_key`. ``name`` defaults to the first 8 hex
    characters of the hash: short enough for logs and metrics, useless for guessing the key.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_hash: str = Field(description="sha256 hex digest of the key")
    tenant: str = Field(min_length=1, description="tenant whose rows the key may touch")
    scopes: frozenset[str] = Field(min_length=1, description=f"subset of {sorted(SCOPES)}")
    name: str = Field("", description="short non-secret id (default: first 8 hex chars of key_hash)")

    @field_validator("key_hash")
    @classmethod
    def _check_hash(cls, v: str) -> str:
        v = v.strip().lower()
        if not _HEX64.match(v):
            raise ValueError("key_hash must be a sha256 hex digest (64 hex characters)")
        return v

    @field_validator("tenant")
    @classmethod
    def _check_tenant(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("tenant must not be empty")
        return v

    @field_validator("scopes")
    @classmethod
    def _check_scopes(cls, v: frozenset[str]) -> frozenset[str]:
        unknown = sorted(v - SCOPES)
        if unknown:
            raise ValueError(f"unknown scope(s) {unknown}; expected a subset of {sorted(SCOPES)}")
        return v

    @model_validator(mode="after")
    def _default_name(self) -> "ApiKeyRecord":
        if not self.name:
            # frozen model: bypass __setattr__ once, during validation
            object.__setattr__(self, "name", self.key_hash[:8])
        return self

    @classmethod
    def from_key(cls, key: str, tenant: str, scopes: Iterable[str], name: str = "") -> "ApiKeyRecord":
        """Build a record from a plaintext key, which is hashed and not kept.

        Args:
            key: the plaintext key.
            tenant: the key's tenant.
            scopes: the key's scopes.
            name: optional display id (default: first 8 hex chars of the hash).

        Returns:
            The record.

        Raises:
            pydantic.ValidationError: empty tenant, no scopes or an unknown scope.
        """
        return cls(key_hash=hash_key(key), tenant=tenant, scopes=frozenset(scopes), name=name)


def _fail(index: int, shown: str, reason: str) -> AuthConfigError:
    return AuthConfigError(f"{ENV_VAR} entry {index} ({shown!r}): {reason}")


def parse_api_keys(spec: str) -> list[ApiKeyRecord]:
    """Parse the env format ``key:tenant:scope+scope,key:tenant:scope``.

    Whitespace around entries, fields and scopes is ignored; an empty or blank spec means
    no keys. Error messages name the entry by position with the key redacted, because
    they end up in logs.

    Args:
        spec: the value of ``PIXLAKE_API_KEYS``.

    Returns:
        One record per entry, in order.

    Raises:
        AuthConfigError: an entry is not three ``:``-separated fields, has an empty key,
            tenant or scope list, names an unknown scope, or repeats an earlier key.
    """
    if not spec.strip():
        return []
    records: list[ApiKeyRecord] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(spec.split(","), start=1):
        parts = [p.strip() for p in raw.split(":")]
        if len(parts) != 3:
            shown = "<redacted>:..." if len(parts) > 1 else ("<redacted>" if raw.strip() else "")
            raise _fail(index, shown, f"expected key:tenant:scope+scope, got {len(parts)} field(s)")
        key, tenant, scope_text = parts
        shown = f"<redacted>:{tenant}:{scope_text}" if key else f":{tenant}:{scope_text}"
        if not key:
            raise _fail(index, shown, "empty key")
        if not tenant:
            raise _fail(index, shown, "empty tenant")
        scopes = [s.strip() for s in scope_text.split("+")]
        if not scope_text or any(not s for s in scopes):
            raise _fail(index, shown, "empty scope")
        unknown = sorted(set(scopes) - SCOPES)
        if unknown:
            raise _fail(index, shown, f"unknown scope(s) {', '.join(unknown)}; expected {', '.join(sorted(SCOPES))}")
        record = ApiKeyRecord.from_key(key, tenant, scopes)
        if record.key_hash in seen:
            # the same key with two tenants would be ambiguous; reject rather than guess
            raise _fail(index, shown, f"repeats the key of entry {seen[record.key_hash]}")
        seen[record.key_hash] = index
        records.append(record)
    return records


def keys_from_env(var: str = ENV_VAR) -> list[ApiKeyRecord]:
    """Read API keys from an environment variable in the :func:`parse_api_keys` format.

    Args:
        var: the variable name.

    Returns:
        The records; an empty list when the variable is unset or blank.

    Raises:
        AuthConfigError: the value is malformed.
    """
    return parse_api_keys(os.environ.get(var, ""))


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: the key's tenant, scopes and non-secret name."""

    tenant: str
    scopes: frozenset[str]
    key_name: str

    def require(self, scope: str) -> None:
        """Check that the caller holds a scope. Scopes are independent: ``admin`` grants no others.

        Args:
            scope: one of :data:`SCOPES`.

        Raises:
            Forbidden: the key lacks ``scope``.
            ValueError: ``scope`` is not a known scope (a programming error, not a client's).
        """
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
        if scope not in self.scopes:
            raise Forbidden(f"API key {self.key_name} lacks the {scope!r} scope")


class KeyStore:
    """The configured keys, looked up by the hash of a presented bearer token.

    Args:
        records: the configured keys.

    Raises:
        AuthConfigError: two records share a hash or a name (names label logs and metrics).
    """

    def __init__(self, records: Iterable[ApiKeyRecord]):
        self._records: tuple[ApiKeyRecord, ...] = tuple(records)
        hashes = [r.key_hash for r in self._records]
        names = [r.name for r in self._records]
        if len(set(hashes)) != len(hashes):
            raise AuthConfigError("API keys: the same key is configured twice")
        if len(set(names)) != len(names):
            raise AuthConfigError("API keys: two keys share a name; give them distinct names")

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"KeyStore(keys={[r.name for r in self._records]})"

    def authenticate(self, authorization_header: Optional[str]) -> Principal:
        """Resolve an ``Authorization: Bearer <key>`` header to the caller.

        Args:
            authorization_header: the raw header value, or None when absent.

        Returns:
            The caller's principal.

        Raises:
            Unauthorized: the header is missing, not a Bearer token, or the key is unknown.
        """
        if not authorization_header or not authorization_header.strip():
            raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <api key>'")
        scheme, _, token = authorization_header.strip().partition(" ")
        token = token.strip()
        # auth schemes are case-insensitive (RFC 7235)
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("Authorization header must be 'Bearer <api key>'")
        presented = hash_key(token)
        match: Optional[ApiKeyRecord] = None
        # compare against every record without stopping early, so timing does not reveal
        # which stored hash (if any) shares a prefix with the presented one
        for record in self._records:
            if hmac.compare_digest(presented, record.key_hash):
                match = record
        if match is None:
            raise Unauthorized("invalid API key")
        return Principal(tenant=match.tenant, scopes=match.scopes, key_name=match.name)


class RateLimiter:
    """Token bucket per key name, safe to share between request threads.

    Each key may make ``burst`` requests at once, refilled at ``rate_per_s``. Buckets
    are created on first use; only authenticated key names reach the limiter, so their
    number is bounded by the configured keys.

    Args:
        rate_per_s: tokens added per second (> 0).
        burst: bucket capacity (>= 1).
        clock: monotonic seconds; injectable so tests need no sleeps.

    Raises:
        AuthConfigError: a non-positive rate or burst.
    """

    # absorbs float error so a refill of exactly one token's time always yields a token
    _EPS = 1e-9

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if not rate_per_s > 0:
            raise AuthConfigError(f"rate limit: rate_per_s must be > 0, got {rate_per_s}")
        if int(burst) < 1:
            raise AuthConfigError(f"rate limit: burst must be >= 1, got {burst}")
        self.rate_per_s = float(rate_per_s)
        self.burst = int(burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key name -> (tokens, last refill time)

    def debit(self, key_name: str, cost: float) -> None:
        """Take ``cost`` tokens for work already done (its size known only afterwards),
        without refusing: the bucket may go below zero, and the key's next requests wait
        until it refills."""
        with self._lock:
            now, tokens = self._refilled(key_name)
            self._buckets[key_name] = (tokens - cost, now)

    def _refilled(self, key_name: str) -> tuple[float, float]:
        """(now, the key's tokens refilled up to now); the caller holds the lock."""
        now = self._clock()
        tokens, last = self._buckets.get(key_name, (float(self.burst), now))
        # max(0, ...) guards a clock that steps back (only possible with a fake clock)
        return now, min(float(self.burst), tokens + max(0.0, now - last) * self.rate_per_s)

    def check(self, key_name: str, cost: float = 1.0) -> None:
        """Take ``cost`` tokens (one request's worth by default) from the key's bucket.

        Args:
            key_name: the caller's key name (``Principal.key_name``).
            cost: tokens this request takes (a thumbnail takes a fraction of a search).

        Raises:
            RateLimited: the bucket is empty; ``retry_after_s`` is the ceiling of the
                time until the next token, at least 1.
        """
        with self._lock:
            now, tokens = self._refilled(key_name)
            if tokens + self._EPS >= cost:
                self._buckets[key_name] = (tokens - cost, now)
                return
            self._buckets[key_name] = (tokens, now)
            wait = (cost - tokens) / self.rate_per_s
        log.debug("rate limited key %s for %.3f s", key_name, wait)
        raise RateLimited(max(1, math.ceil(wait - self._EPS)))
