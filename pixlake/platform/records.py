"""The Milvus record: field names, deterministic row ids, subject pseudonyms."""

from __future__ import annotations

import hashlib
import hmac

# Field names of a row (DESIGN.md "Records"); the store's schema is built from these.
ID, TENANT, SUBJECT, CONTENT_HASH, SOURCE, MODEL, META, NONCE, KEY_ID, VECTOR = (
    "id", "tenant", "subject", "content_hash", "source", "model", "meta", "nonce", "key_id", "vector",
)
SCALAR_FIELDS = (ID, TENANT, SUBJECT, CONTENT_HASH, SOURCE, MODEL, META, NONCE, KEY_ID)


def pseudonym(tenant: str, subject: str) -> str:
    """Pseudonymise a data subject id so the raw id never reaches the store.

    Until the governance module supplies per-tenant secrets the HMAC key is derived from
    the tenant name alone, which hides ids from casual readers but not from someone who
    can guess them; governance replaces the key with the tenant key.

    Args:
        tenant: tenant id.
        subject: the raw subject id.

    Returns:
        32 hex characters.
    """
    key = hashlib.sha256(b"pixlake-pseudonym\0" + tenant.encode()).digest()
    return hmac.new(key, subject.encode(), hashlib.sha256).hexdigest()[:32]


def item_subject(content_hash: str) -> str:
    """The subject of an item that names none: the item itself."""
    return f"item:{content_hash}"


def row_id(tenant: str, subject_pseudonym: str, content_hash: str) -> str:
    """Deterministic primary key over (tenant, subject, content): re-runs upsert, never duplicate."""
    h = hashlib.sha256("\0".join((tenant, subject_pseudonym, content_hash)).encode())
    return h.hexdigest()[:32]
