"""The Milvus record: field names and deterministic row ids. Subject pseudonyms come from
the governance module (HMAC under the tenant's identity key)."""

from __future__ import annotations

import hashlib

# Field names of a row (DESIGN.md "Records"); the store's schema is built from these.
ID, TENANT, SUBJECT, CONTENT_HASH, SOURCE, MODEL, META, NONCE, KEY_ID, VECTOR = (
    "id", "tenant", "subject", "content_hash", "source", "model", "meta", "nonce", "key_id", "vector",
)
SCALAR_FIELDS = (ID, TENANT, SUBJECT, CONTENT_HASH, SOURCE, MODEL, META, NONCE, KEY_ID)


def item_subject(content_hash: str) -> str:
    """The subject of an item that names none: the item itself."""
    return f"item:{content_hash}"


def row_id(tenant: str, subject_pseudonym: str, content_hash: str) -> str:
    """Deterministic primary key over (tenant, subject, content): re-runs upsert, never duplicate."""
    h = hashlib.sha256("\0".join((tenant, subject_pseudonym, content_hash)).encode())
    return h.hexdigest()[:32]
