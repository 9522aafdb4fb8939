"""Tests for pixlake.serve.auth: key parsing, hashed storage, authentication, scopes, rate limits."""

from __future__ import annotations

import hashlib
import threading

import pydantic
import pytest

from pixlake.platform.errors import PixlakeError
from pixlake.serve.auth import (
    SCOPES,
    ApiKeyRecord,
    AuthConfigError,
    Forbidden,
    KeyStore,
    Principal,
    RateLimited,
    RateLimiter,
    Unauthorized,
    hash_key,
    keys_from_env,
    parse_api_keys,
)

SECRET1 = "s3cr3t-key-one-XYZ"
SECRET2 = "an0ther-key-two-QRS"
SPEC = f"{SECRET1}:acme:search+embed,{SECRET2}:globex:search"


class FakeClock:
    """A settable monotonic clock."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def store() -> KeyStore:
    return KeyStore(parse_api_keys(SPEC))


# ---------------------------------------------------------------- parsing


def test_parse_good_spec():
    records = parse_api_keys(SPEC)
    assert [r.tenant for r in records] == ["acme", "globex"]
    assert records[0].scopes == frozenset({"search", "embed"})
    assert records[1].scopes == frozenset({"search"})
    assert records[0].key_hash == hashlib.sha256(SECRET1.encode()).hexdigest()
    assert records[0].name == records[0].key_hash[:8]
    assert isinstance(records[0].scopes, frozenset)


def test_parse_is_whitespace_tolerant():
    records = parse_api_keys(f"  {SECRET1} : acme : search + embed + admin ,\n {SECRET2}:globex:erase  ")
    assert records[0].key_hash == hash_key(SECRET1)
    assert records[0].tenant == "acme"
    assert records[0].scopes == frozenset({"search", "embed", "admin"})
    assert records[1].scopes == frozenset({"erase"})


@pytest.mark.parametrize("spec", ["", "   ", "\n\t"])
def test_parse_empty_spec_means_no_keys(spec):
    assert parse_api_keys(spec) == []


def test_parse_all_scopes():
    (record,) = parse_api_keys("k:t:search+embed+ingest+delete+erase+admin")
    assert record.scopes == SCOPES


@pytest.mark.parametrize(
    "spec, entry, reason",
    [
        ("k1:acme", 1, "expected key:tenant:scope"),
        ("k1:acme:search:extra", 1, "expected key:tenant:scope"),
        ("justakey", 1, "expected key:tenant:scope"),
        ("k1:acme:search,,k2:globex:search", 2, "expected key:tenant:scope"),
        ("k1:acme:search,", 2, "expected key:tenant:scope"),
        (":acme:search", 1, "empty key"),
        ("   :acme:search", 1, "empty key"),
        ("k1::search", 1, "empty tenant"),
        ("k1:  :search", 1, "empty tenant"),
        ("k1:acme:", 1, "empty scope"),
        ("k1:acme:search+", 1, "empty scope"),
        ("k1:acme:search++embed", 1, "empty scope"),
        ("k1:acme:search,k2:globex:serch", 2, "unknown scope(s) serch"),
        ("k1:acme:Search", 1, "unknown scope(s) Search"),
        ("k1:acme:search,k1:globex:embed", 2, "repeats the key of entry 1"),
    ],
)
def test_parse_bad_spec_names_entry(spec, entry, reason):
    with pytest.raises(AuthConfigError) as info:
        parse_api_keys(spec)
    message = str(info.value)
    assert f"entry {entry}" in message
    assert reason in message
    assert isinstance(info.value, PixlakeError)


def test_parse_error_does_not_leak_key():
    with pytest.raises(AuthConfigError) as info:
        parse_api_keys(f"{SECRET1}:acme:serch")
    assert SECRET1 not in str(info.value)
    assert "acme" in str(info.value)  # the tenant identifies the entry
    with pytest.raises(AuthConfigError) as info:
        parse_api_keys(f"{SECRET1}:acme")
    assert SECRET1 not in str(info.value)


def test_keys_from_env(monkeypatch):
    monkeypatch.delenv("PIXLAKE_API_KEYS", raising=False)
    assert keys_from_env() == []
    monkeypatch.setenv("PIXLAKE_API_KEYS", SPEC)
    assert [r.tenant for r in keys_from_env()] == ["acme", "globex"]
    monkeypatch.setenv("OTHER_KEYS", "k:t:admin")
    assert keys_from_env("OTHER_KEYS")[0].scopes == frozenset({"admin"})
    monkeypatch.setenv("PIXLAKE_API_KEYS", "k:t:nope")
    with pytest.raises(AuthConfigError):
        keys_from_env()


# ---------------------------------------------------------------- records hold hashes only


def test_records_and_store_hold_no_plaintext(store):
    records = parse_api_keys(SPEC)
    texts = [repr(records), str(records), repr(store), str(store)]
    texts += [repr(r.model_dump()) for r in records] + [r.model_dump_json() for r in records]
    texts += [repr(vars(store))]
    for text in texts:
        assert SECRET1 not in text
        assert SECRET2 not in text


def test_record_from_config_entry_with_hash():
    digest = hash_key("prod-key")
    record = ApiKeyRecord.model_validate({"key_hash": digest.upper(), "tenant": "acme", "scopes": ["search"]})
    assert record.key_hash == digest  # normalised to lower case
    assert record.name == digest[:8]
    assert record.scopes == frozenset({"search"})
    named = ApiKeyRecord(key_hash=digest, tenant="acme", scopes=frozenset({"admin"}), name="ops")
    assert named.name == "ops"
    principal = KeyStore([record]).authenticate("Bearer prod-key")
    assert principal.tenant == "acme"


@pytest.mark.parametrize(
    "entry",
    [
        {"key_hash": "not-a-hash", "tenant": "acme", "scopes": ["search"]},
        {"key_hash": "ab" * 31, "tenant": "acme", "scopes": ["search"]},
        {"key_hash": "ab" * 32, "tenant": " ", "scopes": ["search"]},
        {"key_hash": "ab" * 32, "tenant": "acme", "scopes": []},
        {"key_hash": "ab" * 32, "tenant": "acme", "scopes": ["search", "root"]},
        {"key_hash": "ab" * 32, "tenant": "acme", "scopes": ["search"], "key": "plaintext"},
    ],
)
def test_record_rejects_bad_config_entry(entry):
    with pytest.raises(pydantic.ValidationError):
        ApiKeyRecord.model_validate(entry)


def test_record_is_immutable():
    (record,) = parse_api_keys("k:t:search")
    with pytest.raises(pydantic.ValidationError):
        record.tenant = "other"


def test_store_rejects_duplicates():
    record = ApiKeyRecord.from_key("k", "t", ["search"])
    with pytest.raises(AuthConfigError):
        KeyStore([record, ApiKeyRecord.from_key("k", "u", ["embed"])])
    with pytest.raises(AuthConfigError):
        KeyStore([ApiKeyRecord.from_key("a", "t", ["search"], name="x"), ApiKeyRecord.from_key("b", "t", ["search"], name="x")])


# ---------------------------------------------------------------- authentication


def test_authenticate_success_gives_tenant_and_scopes(store):
    p = store.authenticate(f"Bearer {SECRET1}")
    assert p == Principal(tenant="acme", scopes=frozenset({"search", "embed"}), key_name=hash_key(SECRET1)[:8])
    assert store.authenticate(f"Bearer {SECRET2}").tenant == "globex"


def test_authenticate_tolerates_scheme_case_and_spaces(store):
    assert store.authenticate(f"bearer {SECRET1}").tenant == "acme"
    assert store.authenticate(f"  BEARER   {SECRET1}  ").tenant == "acme"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_authenticate_missing_header(store, header):
    with pytest.raises(Unauthorized) as info:
        store.authenticate(header)
    assert info.value.status_code == 401
    assert "missing" in info.value.message
    assert info.value.headers == {"WWW-Authenticate": "Bearer"}


@pytest.mark.parametrize("header", [f"Basic {SECRET1}", SECRET1, "Bearer", "Bearer   ", f"Token {SECRET1}"])
def test_authenticate_wrong_scheme(store, header):
    with pytest.raises(Unauthorized) as info:
        store.authenticate(header)
    assert info.value.status_code == 401
    assert "Bearer" in info.value.message


@pytest.mark.parametrize("key", ["nope", SECRET1 + "x", SECRET1[:-1], hash_key(SECRET1)])
def test_authenticate_unknown_key(store, key):
    with pytest.raises(Unauthorized) as info:
        store.authenticate(f"Bearer {key}")
    assert info.value.status_code == 401
    assert info.value.message == "invalid API key"
    assert key not in info.value.message


def test_empty_store_rejects_everyone():
    with pytest.raises(Unauthorized):
        KeyStore([]).authenticate(f"Bearer {SECRET1}")


# ---------------------------------------------------------------- scopes


def test_require_scope(store):
    p = store.authenticate(f"Bearer {SECRET1}")
    p.require("search")
    p.require("embed")
    with pytest.raises(Forbidden) as info:
        p.require("erase")
    assert info.value.status_code == 403
    assert "erase" in info.value.message
    assert p.key_name in info.value.message
    assert isinstance(info.value, PixlakeError)


def test_admin_grants_no_other_scope():
    p = KeyStore(parse_api_keys("k:t:admin")).authenticate("Bearer k")
    p.require("admin")
    with pytest.raises(Forbidden):
        p.require("search")


def test_require_unknown_scope_is_a_programming_error(store):
    with pytest.raises(ValueError):
        store.authenticate(f"Bearer {SECRET1}").require("superuser")


# ---------------------------------------------------------------- rate limiting


def test_rate_limiter_allows_burst_then_limits():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=0.5, burst=3, clock=clock)
    for _ in range(3):
        limiter.check("a")
    with pytest.raises(RateLimited) as info:
        limiter.check("a")
    assert info.value.status_code == 429
    assert info.value.retry_after_s == 2  # one token every 2 s
    assert info.value.headers == {"Retry-After": "2"}
    assert isinstance(info.value, PixlakeError)


def test_rate_limiter_retry_after_is_ceiling_of_wait():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=0.4, burst=1, clock=clock)  # 2.5 s per token
    limiter.check("a")
    with pytest.raises(RateLimited) as info:
        limiter.check("a")
    assert info.value.retry_after_s == 3
    clock.advance(1.0)  # 1.5 s left
    with pytest.raises(RateLimited) as info:
        limiter.check("a")
    assert info.value.retry_after_s == 2
    clock.advance(1.4)  # 0.1 s left: still at least 1
    with pytest.raises(RateLimited) as info:
        limiter.check("a")
    assert info.value.retry_after_s == 1


def test_a_debit_for_work_done_makes_the_next_requests_wait():
    """A thumbnail draw is charged by its bytes after the fact: it never fails itself, but
    a big one leaves the key in debt until the bucket refills past it."""
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=1.0, burst=10, clock=clock)
    limiter.debit("a", 12.0)  # 10 - 12: two tokens of debt
    limiter.debit("b", 0.005)  # another key's small draw
    with pytest.raises(RateLimited) as info:
        limiter.check("a", 0.1)
    assert info.value.retry_after_s == 3  # 2.1 tokens at one a second
    limiter.check("b", 9.9)  # the other key is untouched
    clock.advance(2.2)
    limiter.check("a", 0.1)


def test_rate_limiter_fast_rate_retry_after_at_least_one():
    limiter = RateLimiter(rate_per_s=100, burst=1, clock=FakeClock())
    limiter.check("a")
    with pytest.raises(RateLimited) as info:
        limiter.check("a")
    assert info.value.retry_after_s == 1


def test_rate_limiter_refills_with_clock():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=3, burst=2, clock=clock)
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")
    clock.advance(1 / 3)  # exactly one token
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")
    clock.advance(60)  # refill caps at burst
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")


def test_rate_limiter_rejected_requests_cost_nothing():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=1, burst=1, clock=clock)
    limiter.check("a")
    for _ in range(5):
        with pytest.raises(RateLimited):
            limiter.check("a")
    clock.advance(1)
    limiter.check("a")


def test_rate_limiter_keys_are_independent():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=1, burst=2, clock=clock)
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")
    limiter.check("b")
    limiter.check("b")
    with pytest.raises(RateLimited):
        limiter.check("b")


def test_rate_limiter_thread_safety():
    limiter = RateLimiter(rate_per_s=1, burst=50, clock=FakeClock())  # frozen: no refill
    allowed = {"a": 0, "b": 0}
    count_lock = threading.Lock()
    start = threading.Barrier(16)

    def hammer(key: str) -> None:
        start.wait()
        for _ in range(40):
            try:
                limiter.check(key)
            except RateLimited:
                continue
            with count_lock:
                allowed[key] += 1

    threads = [threading.Thread(target=hammer, args=("ab"[i % 2],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed == {"a": 50, "b": 50}


@pytest.mark.parametrize("rate, burst", [(0, 1), (-1, 1), (1, 0), (1, -3)])
def test_rate_limiter_rejects_bad_settings(rate, burst):
    with pytest.raises(AuthConfigError):
        RateLimiter(rate_per_s=rate, burst=burst)


def test_rate_limiter_charges_the_cost_of_a_request():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=1, burst=1, clock=clock)
    for _ in range(10):  # ten thumbnails (0.1 each) make one search's token
        limiter.check("k", 0.1)
    with pytest.raises(RateLimited):
        limiter.check("k", 0.1)
    clock.advance(0.1)
    limiter.check("k", 0.1)
    with pytest.raises(RateLimited) as e:
        limiter.check("k")  # a whole token needs a second more
    assert e.value.retry_after_s == 1
