"""The Milvus record: field names and deterministic row ids. Subject pseudonyms come from
the governance module (HMAC under the tenant's identity key)."""

from __future__ import annotations

import hashlib
import re

# Field names of a row (docs/architecture.md, "Records"); the store's schema is built from these.
ID, TENANT, SUBJECT, CONTENT_HASH, SOURCE, MODEL, META, NONCE, KEY_ID, VECTOR = (
    "id", "tenant", "subject", "content_hash", "source", "model", "meta", "nonce", "key_id", "vector",
)
SCALAR_FIELDS = (ID, TENANT, SUBJECT, CONTENT_HASH, SOURCE, MODEL, META, NONCE, KEY_ID)


def item_subject(content_hash: str) -> str:
    """The subject of an item that names none: the item itself."""
    return f"item:{content_hash}"


_ROW_ID = re.compile(r"[0-9a-f]{32}")


def is_row_id(value: str) -> bool:
    """Whether ``value`` has the shape of a :func:`row_id` (anything else names no row)."""
    return bool(_ROW_ID.fullmatch(value))


def row_id(tenant: str, subject_pseudonym: str, content_hash: str) -> str:
    """Deterministic primary key over (tenant, subject, content): re-runs upsert, never duplicate."""
    h = hashlib.sha256("\0".join((tenant, subject_pseudonym, content_hash)).encode())
    return h.hexdigest()[:32]
