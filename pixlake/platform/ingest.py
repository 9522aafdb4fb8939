"""Live ingest: one image at a time, its row built exactly as the embed job builds it.

``POST /v1/items`` (the Serve app) and ``pixlake add`` go through :class:`LiveIngest`:

1. :meth:`LiveIngest.identify`: the subject pseudonym and keyed content hash under the
   tenant's identity key (the load stage's derivation), so the same image of the same
   subject has the same row id as the batch job gives it.
2. :meth:`LiveIngest.check`: a subject on the erasure deny-list is refused (it stays
   erased); an id already stored for this encoder ``exists``.
3. The caller decodes (``prepare_pixels``, the decode stage's function) and embeds with the
   collection's encoder (its fingerprint checked here).
4. :meth:`LiveIngest.write`: protect (encrypt, seal) under the tenant's current key, write
   the ids not yet stored (``insert_missing``), then check the deny-list again and take back
   a row whose subject was denied meanwhile: the write stage's order, so an upload racing
   an erasure never brings the subject back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from pixlake.platform import records as R
from pixlake.platform.errors import PixlakeError

ADDED_AT = "added_at"  # the metadata key a live upload carries: when it was written (UTC, ISO 8601)
# The platform's own metadata keys: an upload may not set them.
RESERVED_META = frozenset({ADDED_AT, "near_duplicate_of", "subject", "tenant"})
MAX_META_KEYS, MAX_META_VALUE = 64, 1024
_META_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")  # the filter language's keys
MAX_SUBJECT = 512

CREATED, EXISTS = "created", "exists"


class IngestRefused(PixlakeError):
    """An upload that is not written, with a stable code (the HTTP layer maps it to a status).

    Codes: ``invalid_meta``, ``invalid_subject``, ``erased_subject``, ``model_mismatch``,
    ``quota_exceeded``.
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def check_meta(meta: Any) -> dict[str, Any]:
    """An upload's metadata: a JSON object of at most :data:`MAX_META_KEYS` plain keys (as
    filters name them) to strings, numbers or booleans; the platform's own keys refused.

    Raises:
        IngestRefused: ``invalid_meta``, naming the problem.
    """
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise IngestRefused("invalid_meta", "meta must be a JSON object")
    if len(meta) > MAX_META_KEYS:
        raise IngestRefused("invalid_meta", f"meta has {len(meta)} keys; at most {MAX_META_KEYS}")
    for key, value in meta.items():
        if not isinstance(key, str) or not _META_KEY.match(key):
            raise IngestRefused("invalid_meta", f"meta key {key!r}: letters, digits, _ and -, 64 at most, not first a digit")
        if key in RESERVED_META:
            raise IngestRefused("invalid_meta", f"meta key {key!r} is set by pixlake")
        if isinstance(value, bool) or isinstance(value, int) and abs(value) < 2 ** 63:
            continue
        if isinstance(value, float) and np.isfinite(value):
            continue
        if isinstance(value, str) and len(value) <= MAX_META_VALUE:
            continue
        raise IngestRefused("invalid_meta", f"meta[{key!r}]: a string of at most {MAX_META_VALUE} characters, "
                                            "a finite number or a boolean")
    return dict(meta)


def check_subject(subject: Optional[str]) -> str:
    """The subject id ("" for none: the image is its own subject), or ``invalid_subject``."""
    if subject is None:
        return ""
    if not isinstance(subject, str) or len(subject) > MAX_SUBJECT:
        raise IngestRefused("invalid_subject", f"subject must be a string of at most {MAX_SUBJECT} characters")
    return subject


@dataclass
class Upload:
    """One image on its way in: its row's identity, what it carries, and its vector once embedded."""

    tenant: str
    subject: str  # the pseudonym
    content_hash: str
    id: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    vector: Optional[np.ndarray] = None


class LiveIngest:
    """Identify, check and write uploads into one collection, through its governance.

    Args:
        store: the collection's store (it must exist: its encoder is the one uploads are embedded with).
        governance: the collection's governance.
    """

    def __init__(self, store: Any, governance: Any):
        self.store = store
        self.governance = governance

    def identify(self, tenant: str, subject: Optional[str], data: bytes, meta: Any = None,
                 source: Optional[str] = None) -> Upload:
        """The row an image becomes: same pseudonym, keyed hash and id as the embed job's.

        Raises:
            IngestRefused: bad ``meta`` or ``subject``.
        """
        meta, raw = check_meta(meta), check_subject(subject)
        pseudonym, digest = self.governance.tenant_crypto(tenant, vectors=False).identify(raw, data)
        return Upload(tenant, pseudonym, digest, R.row_id(tenant, pseudonym, digest), source or f"content:{digest}", meta)

    def check(self, upload: Upload, model: str) -> Optional[str]:
        """:data:`EXISTS` when the row is stored already for ``model``, None when it is new.
        The lookup is Bounded (a Milvus server answers without waiting for its next time
        tick): a row stored in the last seconds is found by :meth:`write`'s Strong check.

        Raises:
            IngestRefused: ``erased_subject`` when the subject is on the deny-list.
        """
        if self.governance.denied(upload.tenant, [upload.subject]):
            raise IngestRefused("erased_subject", "this subject was erased from the tenant; its images are refused")
        return EXISTS if self.store.existing_ids([upload.id], model, consistency="Bounded") else None

    def write(self, uploads: Sequence[Upload], model: str) -> list[str]:
        """Protect and write embedded uploads; each one's status, in order: :data:`CREATED`,
        :data:`EXISTS` (stored meanwhile, or twice in ``uploads``) or ``erased_subject``
        (denied before or while it was written: nothing of it stays)."""
        added_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        by_tenant: dict[str, list[int]] = {}
        for n, u in enumerate(uploads):
            by_tenant.setdefault(u.tenant, []).append(n)
        status = [EXISTS] * len(uploads)
        for tenant, positions in by_tenant.items():
            group = [uploads[n] for n in positions]
            crypto, keys = self.governance.protection(tenant, sorted({u.subject for u in group}))
            allowed = [(n, u) for n, u in zip(positions, group) if u.subject in keys]  # denied: no key
            for n, u in zip(positions, group):
                if u.subject not in keys:
                    status[n] = "erased_subject"
            records = [self._record(u, model, added_at) for _, u in allowed]
            protected = crypto.protect(records, keys) if records else []
            written = set(self.store.insert_new(protected, model))  # one Strong check: stored meanwhile is "exists"
            for n, u in allowed:
                if u.id in written:
                    status[n] = CREATED
                    written.discard(u.id)  # the same image twice in one batch: the first is created
            late = self.governance.denied(tenant, sorted({u.subject for _, u in allowed}))
            if late:  # denied while we wrote: take those rows back out
                gone = [u.id for _, u in allowed if u.subject in late]
                self.store.delete(ids=gone)
                for n, u in allowed:
                    if u.subject in late:
                        status[n] = "erased_subject"
        return status

    @staticmethod
    def _record(u: Upload, model: str, added_at: str) -> dict:
        if u.vector is None:
            raise ValueError(f"upload {u.id} has no vector")
        return {R.ID: u.id, R.TENANT: u.tenant, R.SUBJECT: u.subject, R.CONTENT_HASH: u.content_hash,
                R.SOURCE: u.source, R.MODEL: model, R.META: {**u.meta, ADDED_AT: added_at},
                R.VECTOR: [float(x) for x in np.asarray(u.vector, np.float32)]}


def added_at(meta: Mapping[str, Any]) -> Optional[str]:
    """When a row was added, for a live upload (None for a row the embed job wrote)."""
    value = meta.get(ADDED_AT)
    return value if isinstance(value, str) else None


def describe_item(row: Mapping[str, Any]) -> dict:
    """``GET /v1/items/{id}``'s answer for a revealed row: id, metadata, when it was added; never the vector."""
    meta = dict(row.get(R.META) or {})
    when = added_at(meta)
    meta.pop(ADDED_AT, None)
    return {"id": row[R.ID], "meta": meta, "added_at": when}


def json_meta(text: Optional[str]) -> Any:
    """The ``meta`` form field of a multipart upload, parsed (a JSON object expected).

    Raises:
        IngestRefused: ``invalid_meta`` when it is not JSON.
    """
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        raise IngestRefused("invalid_meta", f"meta is not valid JSON: {e}") from e
