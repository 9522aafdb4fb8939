"""Tests for pixlake.platform.governance.keys (master key, tenant/data keys, shredding) and audit."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from pixlake.platform.errors import ConfigError, GovernanceError
from pixlake.platform.governance.audit import AuditLog
from pixlake.platform.governance.keys import (
    MASTER_KEY_ENV,
    MASTER_KEY_FILE_ENV,
    LocalKeyService,
    load_master_key,
)

MASTER = bytes(range(32))
OTHER_MASTER = bytes(range(1, 33))
P1, P2, P3 = "a1" * 16, "b2" * 16, "c3" * 16


pytestmark = pytest.mark.usefixtures("no_master_key_env")


@pytest.fixture
def store(tmp_path: Path):
    service = LocalKeyService(tmp_path / "keys" / "keys.sqlite", MASTER)
    yield service
    service.close()


def _write_key_file(path: Path, key: bytes, mode: int = 0o600) -> Path:
    path.write_text(base64.b64encode(key).decode() + "\n")
    path.chmod(mode)
    return path


def _store_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    journal = path.with_name(path.name + "-journal")
    return data + (journal.read_bytes() if journal.exists() else b"")


def _wrapped(path: Path, key_id: str) -> bytes:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT wrapped FROM data_keys WHERE key_id = ?", (key_id,)).fetchone()[0]
    finally:
        conn.close()


# --- load_master_key ---------------------------------------------------------------------


def test_master_key_precedence_env_then_file_env_then_directory(tmp_path, monkeypatch):
    env_key, file_key, dir_key = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    _write_key_file(tmp_path / "master.key", dir_key)
    key_file = _write_key_file(tmp_path / "elsewhere.key", file_key)

    assert load_master_key(tmp_path, create=False) == (dir_key, f"file {tmp_path / 'master.key'}")
    monkeypatch.setenv(MASTER_KEY_FILE_ENV, str(key_file))
    assert load_master_key(tmp_path, create=False) == (file_key, f"file {key_file}")
    monkeypatch.setenv(MASTER_KEY_ENV, base64.urlsafe_b64encode(env_key).decode().rstrip("="))
    assert load_master_key(tmp_path, create=False) == (env_key, f"env {MASTER_KEY_ENV}")


def test_master_key_created_0600_and_reused(tmp_path):
    key_dir = tmp_path / "gov" / "keys"
    key, where = load_master_key(key_dir, create=True)
    path = key_dir / "master.key"
    assert len(key) == 32
    assert str(path) in where and "back it up" in where
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir.stat().st_mode) & 0o077 == 0
    assert base64.b64decode(path.read_text()) == key
    assert load_master_key(key_dir, create=True) == (key, f"file {path}")  # not regenerated
    assert [p.name for p in key_dir.iterdir()] == ["master.key"]  # no temp file left behind


def test_no_master_key_without_create_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=MASTER_KEY_ENV) as info:
        load_master_key(tmp_path, create=False)
    assert MASTER_KEY_FILE_ENV in str(info.value) and "key_dir" in str(info.value)
    assert not (tmp_path / "master.key").exists()


@pytest.mark.parametrize("via_env", [False, True])
def test_group_readable_key_file_refused(tmp_path, monkeypatch, via_env):
    path = _write_key_file(tmp_path / ("env.key" if via_env else "master.key"), MASTER, mode=0o640)
    if via_env:
        monkeypatch.setenv(MASTER_KEY_FILE_ENV, str(path))
    with pytest.raises(ConfigError, match=f"chmod 600 {path}"):
        load_master_key(tmp_path, create=True)


@pytest.mark.parametrize("value", ["not base64 at all!", base64.b64encode(b"\x00" * 16).decode(), "QUJD$"])
def test_malformed_master_key_refused(tmp_path, monkeypatch, value):
    monkeypatch.setenv(MASTER_KEY_ENV, value)
    with pytest.raises(ConfigError, match=MASTER_KEY_ENV):
        load_master_key(tmp_path, create=True)
    monkeypatch.delenv(MASTER_KEY_ENV)
    (tmp_path / "master.key").write_text(value)
    (tmp_path / "master.key").chmod(0o600)
    with pytest.raises(ConfigError, match="master.key"):
        load_master_key(tmp_path, create=True)


def test_missing_key_file_env_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(MASTER_KEY_FILE_ENV, str(tmp_path / "nope.key"))
    with pytest.raises(ConfigError, match=MASTER_KEY_FILE_ENV):
        load_master_key(tmp_path, create=True)


# --- tenant keys ---------------------------------------------------------------------------


def test_store_file_private(store):
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) & 0o077 == 0


def test_tenant_key_created_once_and_stable_across_reopen(tmp_path, store):
    version, key = store.tenant_key("acme")
    assert version == 1 and len(key) == 32
    assert store.tenant_key("acme") == (1, key)
    assert store.tenant_key("acme", 1) == (1, key)
    other_version, other = store.tenant_key("globex")
    assert other != key
    store.close()
    with LocalKeyService(store.path, MASTER) as reopened:
        assert reopened.tenant_key("acme") == (1, key)
        assert reopened.tenant_key("globex") == (other_version, other)


def test_tenant_key_unknown_version_raises(store):
    store.tenant_key("acme")
    with pytest.raises(GovernanceError, match="no key version 7"):
        store.tenant_key("acme", 7)


def test_wrong_master_key_on_reopen_raises(store):
    store.tenant_key("acme")
    with pytest.raises(GovernanceError, match="master key does not match"):
        LocalKeyService(store.path, OTHER_MASTER)


# --- data keys -----------------------------------------------------------------------------


def test_data_keys_stable_across_calls_and_reopen(store):
    first = store.data_keys("acme", [P1, P2])
    assert set(first) == {P1, P2}
    assert all(len(key_id) == 16 and len(key) == 32 for key_id, key in first.values())
    assert first[P1] != first[P2]
    assert store.data_keys("acme", [P2, P1, P1]) == first
    store.close()
    with LocalKeyService(store.path, MASTER) as reopened:
        assert reopened.data_keys("acme", [P1, P2]) == first
        # Same pseudonym in another tenant is another subject with its own key.
        assert reopened.data_keys("globex", [P1])[P1] != first[P1]


def test_data_keys_create_false_does_not_create(store):
    assert store.data_keys("acme", [P1], create=False) == {}
    assert store.data_keys("acme", [P1], create=False) == {}
    created = store.data_keys("acme", [P1])
    assert store.data_keys("acme", [P1, P2], create=False) == created


def test_keys_by_id_round_trip(store):
    keys = store.data_keys("acme", [P1, P2, P3])
    by_id = store.keys_by_id("acme", [key_id for key_id, _ in keys.values()] + ["0" * 16])
    assert by_id == {key_id: key for key_id, key in keys.values()}
    assert store.keys_by_id("globex", [keys[P1][0]]) == {}  # ids are scoped to their tenant


def test_data_keys_batch(store):
    pseudonyms = [f"{i:032x}" for i in range(600)]  # more than one IN (...) chunk
    keys = store.data_keys("acme", pseudonyms)
    assert len(keys) == 600 and len({key_id for key_id, _ in keys.values()}) == 600
    assert store.data_keys("acme", pseudonyms, create=False) == keys


def test_raw_subject_id_refused(store):
    with pytest.raises(GovernanceError, match="pseudonym"):
        store.data_keys("acme", ["alice@example.com"])


# --- shredding -----------------------------------------------------------------------------


def test_shred_destroys_key_material_in_the_file(store):
    keys = store.data_keys("acme", [P1, P2])
    key_id, key = keys[P1]
    wrapped = _wrapped(store.path, key_id)
    before = _store_bytes(store.path)
    assert wrapped[12:] in before  # the check below can fail
    assert key not in before  # only ever stored wrapped

    assert store.shred("acme", P1) == 1
    assert store.shred("acme", P1) == 0  # idempotent
    assert store.is_shredded("acme", P1) and not store.is_shredded("acme", P2)
    assert store.data_keys("acme", [P1, P2]) == {P2: keys[P2]}  # never re-created
    assert store.keys_by_id("acme", [key_id, keys[P2][0]]) == {keys[P2][0]: keys[P2][1]}

    blob = _store_bytes(store.path)  # store still open, as in a running Serve replica
    assert wrapped not in blob and wrapped[12:] not in blob and wrapped[:12] not in blob
    assert key not in blob
    store.close()
    after = _store_bytes(store.path)
    assert wrapped[12:] not in after and key not in after
    with LocalKeyService(store.path, MASTER) as reopened:  # tombstone survives reopen
        assert reopened.is_shredded("acme", P1)
        assert reopened.data_keys("acme", [P1]) == {}


def test_shred_subject_without_keys_blocks_future_keys(store):
    assert store.shred("acme", P3) == 0
    assert store.is_shredded("acme", P3)
    assert store.data_keys("acme", [P3]) == {}
    assert not store.is_shredded("globex", P3)


# --- rotation ------------------------------------------------------------------------------


def test_rotation_rewraps_and_retire(store):
    v1, k1 = store.tenant_key("acme")
    keys = store.data_keys("acme", [P1, P2])
    old_wrapped = _wrapped(store.path, keys[P1][0])
    v2 = store.rotate_tenant_key("acme")
    assert v2 == v1 + 1
    v, k2 = store.tenant_key("acme")
    assert v == v2 and k2 != k1
    assert store.tenant_key("acme", v1) == (v1, k1)  # still readable until retired
    assert store.data_keys("acme", [P1, P2]) == keys  # same bytes, same ids
    assert _wrapped(store.path, keys[P1][0]) != old_wrapped  # re-wrapped under v2

    with pytest.raises(GovernanceError, match="current"):
        store.retire_tenant_key("acme", v2)
    store.retire_tenant_key("acme", v1)
    store.retire_tenant_key("acme", v1)  # idempotent
    with pytest.raises(GovernanceError, match="retired"):
        store.tenant_key("acme", v1)
    with pytest.raises(GovernanceError):
        store.retire_tenant_key("acme", 99)
    store.close()
    with LocalKeyService(store.path, MASTER) as reopened:
        assert reopened.keys_by_id("acme", [keys[P1][0]]) == {keys[P1][0]: keys[P1][1]}
        assert reopened.tenant_key("acme") == (v2, k2)


# --- several processes ---------------------------------------------------------------------


def test_two_services_on_one_file_see_each_other(tmp_path):
    path = tmp_path / "keys.sqlite"
    with LocalKeyService(path, MASTER) as a, LocalKeyService(path, MASTER) as b:
        assert a.tenant_key("acme") == b.tenant_key("acme")
        from_a = a.data_keys("acme", [P1])
        from_b = b.data_keys("acme", [P1, P2])
        assert from_b[P1] == from_a[P1]
        assert a.keys_by_id("acme", [from_b[P2][0]]) == {from_b[P2][0]: from_b[P2][1]}
        assert b.shred("acme", P1) == 1
        assert a.is_shredded("acme", P1) and a.data_keys("acme", [P1]) == {}
        assert b.rotate_tenant_key("acme") == 2
        assert a.tenant_key("acme")[0] == 2
        assert a.data_keys("acme", [P2]) == {P2: from_b[P2]}


# --- audit ---------------------------------------------------------------------------------


def test_audit_records_events_without_key_material(tmp_path):
    audit = AuditLog(tmp_path / "gov" / "audit.jsonl")
    with LocalKeyService(tmp_path / "keys.sqlite", MASTER, audit) as keys:
        _, tenant_key = keys.tenant_key("acme")
        data = keys.data_keys("acme", [P1, P2])
        keys.rotate_tenant_key("acme")
        keys.retire_tenant_key("acme", 1)
        keys.shred("acme", P1)
    events = audit.events()
    assert [e["event"] for e in events] == [
        "tenant_key.created", "data_key.created", "tenant_key.rotated", "tenant_key.retired", "data_key.shredded",
    ]
    created = events[1]
    assert created["tenant"] == "acme" and created["count"] == 2 and created["pseudonyms"] == [P1, P2]
    assert created["key_ids"] == [data[P1][0], data[P2][0]]
    assert events[-1] == {**events[-1], "tenant": "acme", "pseudonym": P1, "count": 1}
    assert all(e["at"].endswith("+00:00") for e in events)

    text = audit.path.read_text()
    for secret in [tenant_key, MASTER] + [key for _, key in data.values()]:
        for form in (secret.hex(), base64.b64encode(secret).decode(), base64.urlsafe_b64encode(secret).decode()):
            assert form not in text and form.rstrip("=") not in text
    assert stat.S_IMODE(audit.path.stat().st_mode) == 0o600
    assert all(json.loads(line) for line in text.splitlines())


@pytest.mark.parametrize("field", ["subject_id", "raw_subject"])
def test_audit_refuses_raw_subject_fields(tmp_path, field):
    audit = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(ValueError, match=field):
        audit.record("data_key.shredded", **{field: "alice@example.com"})
    with pytest.raises(ValueError, match="key material"):
        audit.record("oops", key=os.urandom(32))
    assert audit.events() == []
    assert "alice" not in audit.path.read_text()
