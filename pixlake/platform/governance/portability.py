"""Export, re-keying and re-encrypting copies, all read from the Milvus rows themselves.

There is one copy of each vector: the encrypted row. Anything that needs the plaintext
(a data-portability export, rotating a tenant key, rebuilding a collection with another
index or beta) decrypts those rows with the subjects' keys, page by page.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from typing import Iterator, Optional

from pixlake.platform import records as R
from pixlake.platform.governance.service import Governance, protect_rows
from pixlake.platform.store import MilvusStore, build_filter

_ALL = (R.ID, R.TENANT, R.SUBJECT, R.CONTENT_HASH, R.SOURCE, R.MODEL, R.META, R.NONCE, R.KEY_ID, R.VECTOR)


def decrypted_pages(store: MilvusStore, governance: Governance, tenant: str,
                    subject: Optional[str] = None) -> Iterator[list[dict]]:
    """A tenant's rows (or one subject pseudonym's), decrypted, page by page."""
    expr = build_filter(tenant, subject=subject)
    for page in store.pages(expr, _ALL):
        yield governance.reveal(tenant, page)


def export_subject(store: MilvusStore, governance: Governance, tenant: str, subject: str) -> dict:
    """A data subject's items in every collection of the database, decrypted (GDPR art. 20).

    Returns:
        ``{"subject": pseudonym, "tenant", "exported_at", "collections": {name: [{"id",
        "source", "meta", "model", "vector"}]}}``.
    """
    pseudonym = governance.pseudonym(tenant, subject)
    out: dict[str, list[dict]] = {}
    for s in store.each_collection():
        items = [{"id": r[R.ID], "source": r[R.SOURCE], "meta": r[R.META], "model": r[R.MODEL],
                  "vector": [round(float(x), 7) for x in r[R.VECTOR]]}
                 for page in decrypted_pages(s, governance, tenant, pseudonym) for r in page]
        if items:
            out[s.collection] = items
    governance.audit.record("subject.exported", tenant=tenant, pseudonym=pseudonym,
                            count=sum(len(v) for v in out.values()))
    return {"subject": pseudonym, "tenant": tenant,
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "collections": out}


def reencrypt(source: MilvusStore, target: MilvusStore, governance: Governance, tenant: str) -> int:
    """Write a tenant's rows of ``source`` into ``target`` under the current tenant key and
    the current beta (fresh nonces), from the decrypted rows: no re-embedding. ``target``
    may be ``source`` itself (re-keying in place: same ids, upserted). Returns rows written."""
    written = 0
    for page in decrypted_pages(source, governance, tenant):
        if not page:
            continue
        dim = len(page[0][R.VECTOR])
        version, cipher = governance.cipher(tenant, dim)
        if governance.encryption:
            keys = governance.data_keys(tenant, sorted({r[R.SUBJECT] for r in page}), create=True)
            page = [r for r in page if r[R.SUBJECT] in keys]  # others are being erased
            records = protect_rows(page, version, cipher, keys, governance.settings.sensitive_meta)
        else:
            records = [{**r, R.VECTOR: [float(x) for x in r[R.VECTOR]], R.NONCE: "", R.KEY_ID: ""} for r in page]
        if target is not source:
            target.ensure_collection(dim, records[0][R.MODEL])
        written += target.upsert(records)
    return written


def rekey(store: MilvusStore, governance: Governance, tenant: str) -> dict:
    """Rotate a tenant's vector key: re-encrypt its rows in every collection under a new key
    version, then retire the old one. Resumable: rows carry their key version, so a re-run
    after a crash re-encrypts whatever is left. Pseudonyms and row ids do not change (they
    come from the tenant's identity key, which is never rotated).

    Returns:
        ``{"tenant", "from_version", "to_version", "rows"}``.
    """
    old, _ = governance.tenant_key(tenant)
    new = governance.keys.rotate_tenant_key(tenant)
    rows = sum(reencrypt(s, s, governance, tenant) for s in store.each_collection())
    versions = defaultdict(int)
    for s in store.each_collection():
        for page in s.pages(build_filter(tenant), (R.NONCE,)):
            for r in page:
                versions[r[R.NONCE].split(":", 1)[0]] += 1
    if set(versions) <= {str(new)}:
        for version in range(1, new):
            try:
                governance.keys.retire_tenant_key(tenant, version)
            except Exception:  # already retired
                pass
    governance.audit.record("tenant.rekeyed", tenant=tenant, count=rows, previous=old, version=new)
    return {"tenant": tenant, "from_version": old, "to_version": new, "rows": rows}
