"""One tenant's crypto as a picklable handle: the single derivation of pseudonyms, keyed
content hashes, vector ciphers and protected rows.

The governance owner (:meth:`~pixlake.platform.governance.service.Governance.tenant_crypto`,
a job's governance actor) hands a stage a :class:`TenantCrypto`; the stage derives
locally with it, spread over the cluster's tasks. Erasure, export and re-keying derive
through the same class, so a pseudonym written by a job is the one an erasure looks for.

A handle holds only its own tenant's keys, and only the parts asked for: the identity
key (pseudonyms, content hashes; never rotated) and one version of the vector key. Never
the master key, nor any subject's data key (those come per batch, after the deny-list).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from pixlake.platform import records as R
from pixlake.platform.errors import GovernanceError
from pixlake.platform.governance.cipher import (
    VectorCipher,
    associated_data,
    keyed_content_hash,
    keyed_hash,
    new_nonces,
    seal,
)
from pixlake.platform.images import content_hash as plain_content_hash

SEALED_META = "_sealed"  # meta key holding the sealed sensitive fields


def nonce_field(version: int, beta: float, nonce: bytes) -> str:
    """The row's ``nonce`` field: tenant key version, the beta the noise was drawn with (so
    decryption never depends on the reader's settings) and the noise nonce."""
    return f"{version}:{beta!r}:{nonce.hex()}"


def parse_nonce(value: str) -> tuple[int, float, bytes]:
    """Inverse of :func:`nonce_field`."""
    version, beta, nonce = value.split(":")
    return int(version), float(beta), bytes.fromhex(nonce)


def protect_rows(rows: list[dict], version: int, cipher: VectorCipher, keys: dict[str, tuple[str, bytes]],
                 sensitive: Sequence[str]) -> list[dict]:
    """Encrypt the vectors and seal the sources (and sensitive metadata) of store records of one tenant.

    Args:
        rows: store records (``vector`` plaintext, ``meta`` a dict); every subject must be in ``keys``.
        version, cipher: the tenant key version and its cipher.
        keys: pseudonym -> (key_id, data key).
        sensitive: metadata fields to seal.

    Returns:
        New records with ``vector``, ``source``, ``meta``, ``nonce`` and ``key_id`` protected.
    """
    if not rows:
        return []
    nonces = new_nonces(len(rows))
    data_keys = [keys[r[R.SUBJECT]][1] for r in rows]
    vectors = cipher.encrypt(np.asarray([r[R.VECTOR] for r in rows], np.float32), data_keys, nonces)
    out = []
    for r, vector, nonce, key in zip(rows, vectors, nonces, data_keys):
        key_id = keys[r[R.SUBJECT]][0]
        aad = associated_data(r[R.ID], r[R.TENANT], key_id)
        meta = dict(r[R.META])
        secret = {f: meta.pop(f) for f in sensitive if f in meta}
        if secret:
            meta[SEALED_META] = seal(json.dumps(secret), key, aad)
        out.append({**r, R.VECTOR: [float(x) for x in vector], R.SOURCE: seal(r[R.SOURCE], key, aad), R.META: meta,
                    R.NONCE: nonce_field(version, cipher.beta, nonce), R.KEY_ID: key_id})
    return out


@dataclass
class TenantCrypto:
    """What a stage needs of one tenant's keys, picklable (it travels to Ray tasks).

    Args:
        tenant: the tenant.
        identity_key: the tenant's identity key (pseudonyms, keyed content hashes), or None
            when the holder derives no identities.
        version, vector_key: one version of the tenant's vector key, or None when the holder
            encrypts nothing.
        beta: approximation factor of the vector encryption (the governance setting).
        encryption: whether vectors are encrypted and sources sealed.
        sensitive_meta: metadata fields sealed under the subject's data key.
    """

    tenant: str
    identity_key: Optional[bytes] = field(default=None, repr=False)
    version: Optional[int] = None
    vector_key: Optional[bytes] = field(default=None, repr=False)
    beta: float = 1.0
    encryption: bool = True
    sensitive_meta: tuple[str, ...] = ()
    _ciphers: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict:
        # Ciphers are rebuilt where they are used: a handle travels with its keys only.
        return {**self.__dict__, "_ciphers": {}}

    def _identity(self) -> bytes:
        if self.identity_key is None:
            raise GovernanceError(f"this handle of tenant {self.tenant!r} carries no identity key; "
                                  "ask the governance owner for one with identity=True")
        return self.identity_key

    # --- identities ------------------------------------------------------------------------

    def pseudonym(self, subject: str) -> str:
        """HMAC pseudonym of a raw subject id under the tenant's identity key."""
        return keyed_hash(self._identity(), subject.encode(), "subject")

    def content_hash(self, digest: str) -> str:
        """A row's ``content_hash``: the plain SHA-256 hex ``digest`` of its bytes, keyed."""
        return keyed_content_hash(self._identity(), digest)

    def identify(self, subject: str, data: bytes) -> tuple[str, str]:
        """``(subject pseudonym, keyed content hash)`` of an item's bytes; an item that names
        no subject is its own (:func:`pixlake.platform.records.item_subject`)."""
        digest = self.content_hash(plain_content_hash(data))
        return self.pseudonym(subject or R.item_subject(digest)), digest

    # --- vectors and rows ----------------------------------------------------------------------

    def cipher(self, dim: int, beta: Optional[float] = None) -> VectorCipher:
        """The vector cipher of this handle's key version for ``dim`` (and ``beta``, the setting by default)."""
        if self.vector_key is None:
            raise GovernanceError(f"this handle of tenant {self.tenant!r} carries no vector key; "
                                  "ask the governance owner for one with vectors=True")
        beta = self.beta if beta is None else beta
        if (dim, beta) not in self._ciphers:
            self._ciphers[(dim, beta)] = VectorCipher(self.vector_key, dim, beta)
        return self._ciphers[(dim, beta)]

    def protect(self, rows: list[dict], keys: dict[str, tuple[str, bytes]]) -> list[dict]:
        """Protect store records of this tenant under this key version (:func:`protect_rows`);
        every subject must be in ``keys`` (pseudonym -> (key_id, data key))."""
        if not rows:
            return []
        cipher = self.cipher(len(rows[0][R.VECTOR]))
        return protect_rows(rows, self.version, cipher, keys, self.sensitive_meta)
