"""Key service in one SQLite file (:class:`LocalKeyService`): tenant keys wrapped by the
master key, data keys wrapped by their tenant's key, tombstones of shredded subjects."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pixlake.platform.errors import ConfigError, GovernanceError
from pixlake.platform.governance.audit import AuditLog
from pixlake.platform.governance.key_service import KeyService
from pixlake.platform.governance.master_key import GENERATE_HINT, KEY_BYTES, MASTER_KEY_ENV, MASTER_KEY_FILE_ENV

_NONCE = 12
_KEY_CHECK = b"pixlake master key check v1"
_CHUNK = 500  # bound on SQL parameters per IN (...) query
_HEX = re.compile(r"[0-9a-fA-F]+")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tenant_keys (tenant TEXT NOT NULL, version INTEGER NOT NULL, wrapped BLOB,"
    " created_at TEXT NOT NULL, retired_at TEXT, PRIMARY KEY (tenant, version))",
    "CREATE TABLE IF NOT EXISTS data_keys (key_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, pseudonym TEXT NOT NULL,"
    " tenant_version INTEGER NOT NULL, wrapped BLOB NOT NULL, created_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS data_keys_subject ON data_keys (tenant, pseudonym)",
    # Tombstones: a shredded subject never gets a key again. No key material here.
    "CREATE TABLE IF NOT EXISTS shredded (tenant TEXT NOT NULL, pseudonym TEXT NOT NULL,"
    " shredded_at TEXT NOT NULL, PRIMARY KEY (tenant, pseudonym))",
)
_DATA_COLS = "key_id, pseudonym, tenant_version, wrapped"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _check(tenant: str, pseudonyms: Sequence[str] = ()) -> None:
    # NUL is allowed in tenants: every later AAD field is NUL-free, so AADs stay unambiguous.
    if not isinstance(tenant, str) or not tenant:
        raise GovernanceError(f"invalid tenant {tenant!r}; pass a non-empty tenant name")
    for p in pseudonyms:  # catches a raw subject id passed by mistake before it is stored or logged
        if not isinstance(p, str) or not _HEX.fullmatch(p):
            raise GovernanceError("subjects must be given as pseudonyms (hex strings), not raw ids; pseudonymize first")


def _tenant_aad(tenant: str, version: int) -> bytes:
    return f"tenant\0{tenant}\0{version}".encode()


def _data_aad(tenant: str, pseudonym: str, key_id: str) -> bytes:
    return f"data\0{tenant}\0{pseudonym}\0{key_id}".encode()


def _wrap(kek: AESGCM, key: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(_NONCE)
    return nonce + kek.encrypt(nonce, key, aad)


def _chunks(items: list[str]) -> Iterator[tuple[list[str], str]]:
    for start in range(0, len(items), _CHUNK):
        chunk = items[start : start + _CHUNK]
        yield chunk, ",".join("?" * len(chunk))


class LocalKeyService(KeyService):
    """Key service in one SQLite file, safe for several processes (Serve replicas, CLI jobs) at once.

    Deleted key material is overwritten in the file (``secure_delete``) and the rollback
    journal is deleted after each commit (WAL would keep old page copies around).

    Args:
        path: The key store; created with mode 0600 (parent directory 0700).
        master_key: The 32-byte master key (see :func:`load_master_key`).
        audit: Where key events are recorded; none when None.

    Raises:
        GovernanceError: ``master_key`` is not the store's, or the file is not a usable key store.
    """

    def __init__(self, path: Path, master_key: bytes, audit: AuditLog | None = None) -> None:
        if len(master_key) != KEY_BYTES:
            raise ConfigError(f"master key must be {KEY_BYTES} bytes; {GENERATE_HINT}")
        self.path = Path(path)
        self._master = AESGCM(master_key)
        self._audit = audit
        self._lock = threading.RLock()  # one connection, shared by this process's threads
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # create it 0600 ourselves: SQLite would use 0644
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            str(self.path), timeout=30, isolation_level=None, check_same_thread=False
        )
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        try:
            self._conn.execute("PRAGMA secure_delete = ON")
            mode = self._conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
        except sqlite3.Error as exc:
            raise GovernanceError(f"cannot open key store {self.path}: {exc}; check it is a pixlake key store") from exc
        if str(mode).lower() != "delete":
            raise GovernanceError(f"key store {self.path} is stuck in {mode} journal mode; stop its other users, reopen")
        with self._txn(write=True) as c:
            for statement in _SCHEMA:
                c.execute(statement)
            row = c.execute("SELECT value FROM meta WHERE name = 'key_check'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta VALUES ('key_check', ?)", (_wrap(self._master, _KEY_CHECK, b"keycheck"),))
                return
            try:
                ok = self._master.decrypt(row[0][:_NONCE], row[0][_NONCE:], b"keycheck") == _KEY_CHECK
            except InvalidTag:
                ok = False
            if not ok:
                raise GovernanceError(
                    f"master key does not match {self.path}; use the master key it was created with"
                    f" ({MASTER_KEY_ENV}, {MASTER_KEY_FILE_ENV} or governance.key_dir)"
                )

    @contextlib.contextmanager
    def _txn(self, write: bool) -> Iterator[sqlite3.Connection]:
        # Short transactions. Writers take the write lock up front (BEGIN IMMEDIATE) so two
        # processes never deadlock upgrading read locks; busy ones wait up to the timeout.
        with self._lock:
            if self._conn is None:
                raise GovernanceError("key service is closed; open a new LocalKeyService")
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise GovernanceError(f"key store {self.path}: {exc}; retry once other users release it") from exc

    def _record(self, event: str, **fields: object) -> None:
        if self._audit is not None:
            self._audit.record(event, **fields)

    def _unwrap(self, kek: AESGCM, blob: bytes, aad: bytes, what: str) -> bytes:
        try:
            return kek.decrypt(blob[:_NONCE], blob[_NONCE:], aad)
        except InvalidTag:
            raise GovernanceError(f"{what} in {self.path} fails authentication (tampered or corrupt); restore a backup") from None

    # --- tenant keys ------------------------------------------------------------------

    @staticmethod
    def _current(c: sqlite3.Connection, tenant: str) -> int | None:
        return c.execute("SELECT MAX(version) FROM tenant_keys WHERE tenant = ?", (tenant,)).fetchone()[0]

    def _tenant_wrapped(self, c: sqlite3.Connection, tenant: str, version: int) -> bytes | None:
        row = c.execute("SELECT wrapped FROM tenant_keys WHERE tenant = ? AND version = ?", (tenant, version)).fetchone()
        if row is None:
            raise GovernanceError(f"tenant {tenant!r} has no key version {version}; use the current version")
        return row[0]

    def _load_tenant_key(self, c: sqlite3.Connection, tenant: str, version: int) -> bytes:
        wrapped = self._tenant_wrapped(c, tenant, version)
        if wrapped is None:
            raise GovernanceError(
                f"key version {version} of tenant {tenant!r} was retired; data still under it is unreadable:"
                " re-ingest it under the current version"
            )
        return self._unwrap(self._master, wrapped, _tenant_aad(tenant, version), f"tenant key {tenant!r} v{version}")

    def _new_tenant_version(self, c: sqlite3.Connection, tenant: str) -> tuple[int, bytes]:
        version, key = (self._current(c, tenant) or 0) + 1, secrets.token_bytes(KEY_BYTES)
        c.execute(
            "INSERT INTO tenant_keys (tenant, version, wrapped, created_at) VALUES (?, ?, ?, ?)",
            (tenant, version, _wrap(self._master, key, _tenant_aad(tenant, version)), _now()),
        )
        return version, key

    def tenant_key(self, tenant: str, version: int | None = None) -> tuple[int, bytes]:
        """Return ``(version, key)``: the current version by default, version 1 created on first use.

        Asking for version 1 of a tenant without keys also creates it (same as first use).

        Raises:
            GovernanceError: ``version`` is unknown or retired.
        """
        _check(tenant)
        with self._txn(write=False) as c:
            current = self._current(c, tenant)
            if current is not None or version not in (None, 1):
                current = current if version is None else version
                return current, self._load_tenant_key(c, tenant, current)
        with self._txn(write=True) as c:
            current = self._current(c, tenant)
            if current is not None:  # another process created it meanwhile
                current = current if version is None else version
                return current, self._load_tenant_key(c, tenant, current)
            current, key = self._new_tenant_version(c, tenant)
        self._record("tenant_key.created", tenant=tenant, version=current)
        return current, key

    def rotate_tenant_key(self, tenant: str) -> int:
        """Make a new current tenant key and re-wrap all the tenant's data keys under it.

        Data keys keep their bytes and ids; the old version stays readable until retired.
        """
        _check(tenant)
        with self._txn(write=True) as c:
            previous = self._current(c, tenant)
            version, key = self._new_tenant_version(c, tenant)
            rows = c.execute(f"SELECT {_DATA_COLS} FROM data_keys WHERE tenant = ?", (tenant,)).fetchall()
            new_kek, keks, updates = AESGCM(key), {}, []
            for key_id, pseudonym, old, wrapped in rows:
                raw = self._unwrap_data(c, keks, tenant, (key_id, pseudonym, old, wrapped))
                updates.append((_wrap(new_kek, raw, _data_aad(tenant, pseudonym, key_id)), version, key_id))
            c.executemany("UPDATE data_keys SET wrapped = ?, tenant_version = ? WHERE key_id = ?", updates)
        if previous is None:
            self._record("tenant_key.created", tenant=tenant, version=version)
        else:
            self._record("tenant_key.rotated", tenant=tenant, version=version, previous=previous, rewrapped=len(updates))
        return version

    def retire_tenant_key(self, tenant: str, version: int) -> None:
        """Destroy an old tenant key version (a no-op for one already retired).

        Raises:
            GovernanceError: ``version`` is current, unknown, or still wraps data keys.
        """
        _check(tenant)
        with self._txn(write=True) as c:
            if version == self._current(c, tenant):
                raise GovernanceError(f"key version {version} of tenant {tenant!r} is current; rotate_tenant_key first")
            if self._tenant_wrapped(c, tenant, version) is None:
                return
            sql = "SELECT COUNT(*) FROM data_keys WHERE tenant = ? AND tenant_version = ?"
            (in_use,) = c.execute(sql, (tenant, version)).fetchone()
            if in_use:  # destroying it would shred those subjects by accident
                raise GovernanceError(
                    f"{in_use} data keys of tenant {tenant!r} are still under version {version}; rotate again first"
                )
            c.execute(
                "UPDATE tenant_keys SET wrapped = NULL, retired_at = ? WHERE tenant = ? AND version = ?",
                (_now(), tenant, version),
            )
        self._record("tenant_key.retired", tenant=tenant, version=version)

    def live_versions(self, tenant: str) -> list[int]:
        """The tenant's key versions not retired, oldest first (the last is current).

        More than one while a rotation is under way: rows under each still exist.
        """
        _check(tenant)
        with self._txn(write=False) as c:
            sql = "SELECT version FROM tenant_keys WHERE tenant = ? AND wrapped IS NOT NULL ORDER BY version"
            return [v for (v,) in c.execute(sql, (tenant,)).fetchall()]

    # --- data keys --------------------------------------------------------------------

    def _unwrap_data(self, c: sqlite3.Connection, keks: dict[int, AESGCM], tenant: str, row: tuple) -> bytes:
        key_id, pseudonym, version, wrapped = row
        if version not in keks:
            keks[version] = AESGCM(self._load_tenant_key(c, tenant, version))
        return self._unwrap(keks[version], wrapped, _data_aad(tenant, pseudonym, key_id), f"data key {key_id}")

    def _read_data_keys(
        self, c: sqlite3.Connection, tenant: str, pseudonyms: list[str]
    ) -> tuple[dict[str, tuple[str, bytes]], set[str]]:
        found: dict[str, tuple[str, bytes]] = {}
        shredded: set[str] = set()
        keks: dict[int, AESGCM] = {}
        for chunk, marks in _chunks(pseudonyms):
            sql = f"SELECT pseudonym FROM shredded WHERE tenant = ? AND pseudonym IN ({marks})"
            shredded.update(r[0] for r in c.execute(sql, (tenant, *chunk)).fetchall())
            sql = f"SELECT {_DATA_COLS} FROM data_keys WHERE tenant = ? AND pseudonym IN ({marks}) ORDER BY rowid"
            for row in c.execute(sql, (tenant, *chunk)).fetchall():  # later rows win: the newest key
                found[row[1]] = (row[0], self._unwrap_data(c, keks, tenant, row))
        return found, shredded

    def data_keys(self, tenant: str, pseudonyms: Sequence[str], create: bool = True) -> dict[str, tuple[str, bytes]]:
        """Return ``pseudonym -> (key_id, 32-byte key)``, creating missing keys when ``create``.

        Shredded pseudonyms never get a key again and are absent from the result. A batch is
        read in one transaction and its missing keys created in at most one more.
        """
        wanted = list(dict.fromkeys(pseudonyms))
        _check(tenant, wanted)
        with self._txn(write=False) as c:
            found, shredded = self._read_data_keys(c, tenant, wanted)
        missing = [p for p in wanted if p not in found and p not in shredded]
        created: list[tuple[str, str]] = []
        new_tenant_version = None
        if create and missing:
            with self._txn(write=True) as c:
                # Re-read under the write lock: another process may have created or shredded some.
                more, shredded = self._read_data_keys(c, tenant, missing)
                found.update(more)
                todo = [p for p in missing if p not in more and p not in shredded]
                version = self._current(c, tenant)
                if todo and version is None:
                    version, tkey = self._new_tenant_version(c, tenant)
                    new_tenant_version = version
                elif todo:
                    tkey = self._load_tenant_key(c, tenant, version)
                rows, kek, now = [], AESGCM(tkey) if todo else None, _now()
                for p in todo:
                    key_id, key = secrets.token_hex(8), secrets.token_bytes(KEY_BYTES)
                    rows.append((key_id, tenant, p, version, _wrap(kek, key, _data_aad(tenant, p, key_id)), now))
                    found[p] = (key_id, key)
                    created.append((p, key_id))
                c.executemany("INSERT INTO data_keys (key_id, tenant, pseudonym, tenant_version, wrapped, created_at)"
                              " VALUES (?, ?, ?, ?, ?, ?)", rows)
        if new_tenant_version is not None:
            self._record("tenant_key.created", tenant=tenant, version=new_tenant_version)
        if created:
            self._record("data_key.created", tenant=tenant, count=len(created),
                         pseudonyms=[p for p, _ in created], key_ids=[k for _, k in created])
        return {p: found[p] for p in wanted if p in found}

    def keys_by_id(self, tenant: str, key_ids: Sequence[str]) -> dict[str, bytes]:
        """Return ``key_id -> key`` for decryption; shredded or unknown ids are absent."""
        _check(tenant)
        result: dict[str, bytes] = {}
        keks: dict[int, AESGCM] = {}
        with self._txn(write=False) as c:
            for chunk, marks in _chunks(list(dict.fromkeys(key_ids))):
                sql = f"SELECT {_DATA_COLS} FROM data_keys WHERE tenant = ? AND key_id IN ({marks})"
                for row in c.execute(sql, (tenant, *chunk)).fetchall():
                    result[row[0]] = self._unwrap_data(c, keks, tenant, row)
        return result

    def shred(self, tenant: str, pseudonym: str) -> int:
        """Destroy the subject's data keys and leave a tombstone; return how many were destroyed.

        Idempotent (again: 0). Works for a subject that never had a key too: none is ever created.
        """
        _check(tenant, [pseudonym])
        with self._txn(write=True) as c:
            count = c.execute("DELETE FROM data_keys WHERE tenant = ? AND pseudonym = ?", (tenant, pseudonym)).rowcount
            c.execute("INSERT OR IGNORE INTO shredded VALUES (?, ?, ?)", (tenant, pseudonym, _now()))
        self._record("data_key.shredded", tenant=tenant, pseudonym=pseudonym, count=count)
        return count

    def is_shredded(self, tenant: str, pseudonym: str) -> bool:
        """Whether the subject was shredded in this tenant."""
        _check(tenant, [pseudonym])
        with self._txn(write=False) as c:
            sql = "SELECT 1 FROM shredded WHERE tenant = ? AND pseudonym = ?"
            return c.execute(sql, (tenant, pseudonym)).fetchone() is not None

    def close(self) -> None:
        """Close the SQLite connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
