"""The governance facade every path goes through: identities, protection, reveal, deny-list.

One :class:`Governance` per process (a job's governance actor, a Serve replica, a CLI
command) opens the key store, the erasure ledger and the audit log in the governance
directory. Jobs reach it through a Ray actor; stages then derive and encrypt locally with
the per-tenant crypto handle it hands out (:meth:`Governance.tenant_crypto`), so the
crypto work spreads over the cluster and every path derives alike.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pixlake.platform import records as R
from pixlake.platform.errors import ConfigError
from pixlake.platform.governance.audit import AuditLog
from pixlake.platform.governance.cipher import VectorCipher, associated_data, unseal
from pixlake.platform.governance.ledger import Ledger
from pixlake.platform.governance.local_keys import LocalKeyService
from pixlake.platform.governance.master_key import load_master_key
from pixlake.platform.governance.tenant_crypto import SEALED_META, TenantCrypto, parse_nonce
from pixlake.platform.governance.tenant_crypto import nonce_field, protect_rows  # noqa: F401 (imported from here)
from pixlake.platform.settings import LITE, GovernanceSettings, Settings, backend_of

log = logging.getLogger(__name__)
# Pseudonyms and keyed content hashes must survive rotation of the vector key, so they
# come from a key namespace of their own that is never rotated.
_IDENTITY = "identity\0"


def governance_dir(settings: Settings) -> Path:
    """Where the key store, ledger and audit log live.

    Raises:
        ConfigError: a Milvus server deployment names no directory.
    """
    if settings.governance.key_dir is not None:
        return Path(settings.governance.key_dir).expanduser().resolve()
    db = settings.store.db
    if backend_of(db) == LITE:
        path = Path(db).expanduser().resolve()
        return path.parent / f"{path.stem}.governance"
    raise ConfigError(
        f"--db {db} is a Milvus server: set governance.key_dir (PIXLAKE_GOVERNANCE__KEY_DIR) to the key store's "
        "directory and supply the master key with PIXLAKE_MASTER_KEY or PIXLAKE_MASTER_KEY_FILE"
    )


def prepare(settings: Settings) -> Path:
    """Check (or, on milvus-lite, create) the key source before any work starts; says so
    on stderr when it creates a master key.

    Returns:
        The governance directory.

    Raises:
        ConfigError: a server deployment without a key directory or master key.
    """
    key_dir = governance_dir(settings)
    _, where = load_master_key(key_dir, create=backend_of(settings.store.db) == LITE)
    if where.startswith("created"):
        print(f"pixlake: {where}", file=sys.stderr)
    return key_dir


class Governance:
    """Keys, ciphers, deny-list and audit of one governance directory.

    Args:
        key_dir: the governance directory.
        settings: governance settings.
        server: True for a Milvus server deployment, which never creates a master key by itself.
    """

    def __init__(self, key_dir: Path, settings: GovernanceSettings, server: bool = False):
        self.dir = Path(key_dir)
        self.settings = settings
        master, where = load_master_key(self.dir, create=not server)
        if where.startswith("created"):
            log.warning("pixlake: %s", where)
        self.audit = AuditLog(self.dir / "audit.jsonl")
        self.keys = LocalKeyService(self.dir / "keys.sqlite", master, self.audit)
        self.ledger = Ledger(self.dir / "ledger.sqlite")
        self._vector_keys: dict[tuple[str, int], TenantCrypto] = {}  # (tenant, version) -> its ciphers
        self._data_keys: OrderedDict[tuple[str, str], bytes] = OrderedDict()  # (tenant, key_id) -> key, LRU
        self._cache_lock = threading.Lock()  # a replica's erasure poller evicts while queries read
        self._deny_cursor = self.ledger.denied_since(0)[0]  # the cache starts empty: nothing to evict yet

    @classmethod
    def open(cls, settings: Settings) -> "Governance":
        """Open the governance of the configured store (creating a local master key on
        first use for milvus-lite; a server deployment must supply one)."""
        return cls(governance_dir(settings), settings.governance, server=backend_of(settings.store.db) != LITE)

    def settings_json(self) -> dict:
        """The governance settings (the stages' copy; also the actor's liveness probe)."""
        return self.settings.model_dump(mode="json")

    def close(self) -> None:
        """Close the key store."""
        self.keys.close()

    @property
    def encryption(self) -> bool:
        """Whether vectors are encrypted and sources sealed."""
        return self.settings.encryption

    # --- identities ------------------------------------------------------------------------

    def identity_key(self, tenant: str) -> bytes:
        """The tenant's secret for pseudonyms and keyed content hashes (never rotated)."""
        return self.keys.tenant_key(_IDENTITY + tenant, 1)[1]

    def tenant_key(self, tenant: str, version: Optional[int] = None) -> tuple[int, bytes]:
        """The tenant's vector key (current version by default)."""
        return self.keys.tenant_key(tenant, version)

    def pseudonym(self, tenant: str, subject: str) -> str:
        """HMAC pseudonym of a raw subject id under the tenant's identity key."""
        return self.tenant_crypto(tenant, vectors=False).pseudonym(subject)

    def tenant_crypto(self, tenant: str, version: Optional[int] = None, *, identity: bool = True,
                      vectors: bool = True) -> TenantCrypto:
        """A picklable handle of one tenant's crypto for a stage (see :mod:`.tenant_crypto`).

        Args:
            version: the vector key version (current by default: asked per batch, a rotation
                shows from the next one).
            identity: include the identity key (pseudonyms, keyed content hashes).
            vectors: include the vector key (encryption, the cipher).
        """
        vector_key = self.tenant_key(tenant, version) if vectors else (None, None)
        return self._crypto(tenant, self.identity_key(tenant) if identity else None, *vector_key)

    def _crypto(self, tenant: str, identity_key: Optional[bytes], version: Optional[int],
                vector_key: Optional[bytes]) -> TenantCrypto:
        return TenantCrypto(tenant, identity_key, version, vector_key, beta=self.settings.beta,
                            encryption=self.settings.encryption, sensitive_meta=tuple(self.settings.sensitive_meta))

    def denied(self, tenant: str, pseudonyms: Sequence[str]) -> set[str]:
        """Pseudonyms on the tenant's erasure deny-list."""
        return self.ledger.denied(tenant, pseudonyms) if pseudonyms else set()

    def data_keys(self, tenant: str, pseudonyms: Sequence[str], create: bool = True) -> dict[str, tuple[str, bytes]]:
        """Subject data keys; denied or shredded subjects get none (and never a new one)."""
        allowed = sorted(set(pseudonyms) - self.denied(tenant, pseudonyms))
        return self.keys.data_keys(tenant, allowed, create=create) if allowed else {}

    def protection(self, tenant: str, pseudonyms: Sequence[str]) -> tuple[TenantCrypto, dict[str, tuple[str, bytes]]]:
        """What the protect stage needs for one batch of a tenant, in one call: the tenant's
        crypto handle at its current key version (no identity key) and the subjects' data
        keys (:meth:`data_keys`: none for denied or shredded subjects)."""
        return self.tenant_crypto(tenant, identity=False), self.data_keys(tenant, pseudonyms)

    # --- vectors and sources -----------------------------------------------------------------

    def cipher(self, tenant: str, dim: int, version: Optional[int] = None,
               beta: Optional[float] = None) -> tuple[int, VectorCipher]:
        """The vector cipher of a tenant key version (current by default) and beta (the setting by default)."""
        version, key = self.tenant_key(tenant, version)
        if (tenant, version) not in self._vector_keys:
            self._vector_keys[(tenant, version)] = self._crypto(tenant, None, version, key)
        return version, self._vector_keys[(tenant, version)].cipher(dim, beta)

    def live_versions(self, tenant: str) -> list[int]:
        """The tenant's key versions not retired, oldest first: more than one while a
        rotation (``pixlake rekey``) is under way and rows under each exist."""
        return self.keys.live_versions(tenant)

    def encrypt_query(self, tenant: str, vector: np.ndarray, version: Optional[int] = None) -> np.ndarray:
        """Encrypt a query vector with the tenant key (current version by default; fresh noise).
        A query compares well only with rows under the same key version."""
        if not self.encryption:
            return vector
        _, cipher = self.cipher(tenant, len(vector), version)
        return cipher.encrypt_query(np.asarray(vector, np.float32)[None])[0]

    def _keys_by_id(self, tenant: str, key_ids: Sequence[str]) -> dict[str, bytes]:
        found, missing = {}, []
        with self._cache_lock:
            for key_id in set(key_ids):
                if (tenant, key_id) in self._data_keys:
                    self._data_keys.move_to_end((tenant, key_id))
                    found[key_id] = self._data_keys[(tenant, key_id)]
                else:
                    missing.append(key_id)
        if missing:
            fetched = self.keys.keys_by_id(tenant, missing)
            found.update(fetched)
            with self._cache_lock:
                for key_id, key in fetched.items():
                    self._data_keys[(tenant, key_id)] = key
                while len(self._data_keys) > self.settings.key_cache_size:
                    self._data_keys.popitem(last=False)
        return found

    def forget(self, tenant: str, key_ids: Sequence[str]) -> None:
        """Drop cached data keys (of an erased subject)."""
        with self._cache_lock:
            for key_id in key_ids:
                self._data_keys.pop((tenant, key_id), None)

    def cached_key_count(self, tenant: str) -> int:
        """Data keys of ``tenant`` held in this process's cache."""
        with self._cache_lock:
            return sum(1 for t, _ in self._data_keys if t == tenant)

    def sync_erasures(self) -> set[str]:
        """Evict the cached data keys of every tenant with a subject put on the deny-list
        since the last call, by any process (an erasure taken by another replica): the
        cache maps key ids, not subjects, so the tenant's whole share goes. Returns those tenants."""
        cursor, tenants = self.ledger.denied_since(self._deny_cursor)
        with self._cache_lock:
            self._deny_cursor = cursor
            for key in [k for k in self._data_keys if k[0] in tenants]:
                del self._data_keys[key]
        return tenants

    def reveal(self, tenant: str, rows: Sequence[dict]) -> list[dict]:
        """Decrypt stored rows of one tenant: exact vectors, opened sources and sealed metadata.

        Rows of denied subjects, or whose data key is gone (shredded), are dropped: they
        belong to an erasure in progress. Rows need ``id``, ``subject``, ``nonce``,
        ``key_id``, ``vector``, ``source`` and ``meta``.
        """
        if not rows:
            return []
        denied = self.denied(tenant, [r[R.SUBJECT] for r in rows])
        if denied:  # an erasure is under way: its keys must not outlive it in this cache
            self.forget(tenant, [r[R.KEY_ID] for r in rows if r[R.SUBJECT] in denied])
        rows = [r for r in rows if r[R.SUBJECT] not in denied]
        # rows stored with --no-encryption carry no key: they are plaintext already
        out = [dict(r) for r in rows if not r[R.KEY_ID]]
        rows = [r for r in rows if r[R.KEY_ID]]
        if not rows:
            return out
        keys = self._keys_by_id(tenant, [r[R.KEY_ID] for r in rows])
        rows = [r for r in rows if r[R.KEY_ID] in keys]
        groups: dict[tuple[int, float], list[int]] = {}  # rows by (key version, beta)
        parsed = [parse_nonce(r[R.NONCE]) for r in rows]
        for i, (version, beta, _) in enumerate(parsed):
            groups.setdefault((version, beta), []).append(i)
        vectors: dict[int, np.ndarray] = {}
        for (version, beta), idx in groups.items():
            stored = np.asarray([rows[i][R.VECTOR] for i in idx], np.float32)
            _, cipher = self.cipher(tenant, stored.shape[1], version, beta)
            plain = cipher.decrypt(stored, [keys[rows[i][R.KEY_ID]] for i in idx], [parsed[i][2] for i in idx])
            vectors.update(zip(idx, plain))
        for i, r in enumerate(rows):
            key = keys[r[R.KEY_ID]]
            aad = associated_data(r[R.ID], tenant, r[R.KEY_ID])
            meta = dict(r.get(R.META) or {})
            if SEALED_META in meta:
                meta.update(json.loads(unseal(meta.pop(SEALED_META), key, aad)))
            out.append({**r, R.VECTOR: vectors[i], R.SOURCE: unseal(r[R.SOURCE], key, aad), R.META: meta})
        return out

