"""Export, re-keying and re-encrypting copies, all read from the Milvus rows themselves.

There is one copy of each vector: the encrypted row. Anything that needs the plaintext
(a data-portability export, rotating a tenant key, rebuilding a collection with another
index or beta) decrypts those rows with the subjects' keys, page by page.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Iterator, Optional

from pixlake.platform import records as R
from pixlake.platform.errors import GovernanceError
from pixlake.platform.governance.service import Governance
from pixlake.platform.store.filters import build_filter

if TYPE_CHECKING:
    from pixlake.platform.store import MilvusStore

MAX_PASSES = 5  # rekey passes before it gives up, the old key versions kept
_ALL = (R.ID, R.TENANT, R.SUBJECT, R.CONTENT_HASH, R.SOURCE, R.MODEL, R.META, R.NONCE, R.KEY_ID, R.VECTOR)


def decrypted_pages(store: MilvusStore, governance: Governance, tenant: str,
                    subject: Optional[str] = None, where: Optional[str] = None) -> Iterator[list[dict]]:
    """A tenant's rows (or one subject pseudonym's, or those matching the filter ``where``), decrypted, page by page."""
    for page in store.pages(where or build_filter(tenant, subject=subject), _ALL):
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


class Journal:
    """Re-encrypted rows of an in-place rewrite not yet confirmed written.

    A Milvus server replaces a row by delete then insert (:meth:`MilvusStore.upsert`), and
    the row being rewritten has no other copy: a crash between the two would lose it. Each
    page is therefore written here first (one file per collection in the governance
    directory, 0600, replaced atomically) and dropped once the store has it; a later
    re-encryption of the collection replays it first. It holds what the rows will hold
    (ciphertext under the new key version, sealed sources), never a plaintext vector while
    encryption is on.
    """

    def __init__(self, governance: Governance, store: MilvusStore):
        digest = hashlib.sha256(f"{store.uri}\0{store.collection}".encode()).hexdigest()[:12]
        self.path = governance.dir / "journal" / f"{store.collection}-{digest}.json"

    def write(self, records: list[dict]) -> None:
        """Persist ``records`` (fsynced) before the store is touched."""
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)  # O_CREAT's mode applies only to a file it creates
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
            json.dump(records, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)

    def clear(self) -> None:
        """The store holds the journaled rows: forget them."""
        self.path.unlink(missing_ok=True)

    def replay(self, store: MilvusStore, governance: Governance) -> int:
        """Insert the journaled rows missing from ``store`` (a crash after a server deleted
        them), except those of subjects erased since; returns rows restored."""
        if not self.path.exists():
            return 0
        records = json.loads(self.path.read_text())
        keep = []
        for tenant in {r[R.TENANT] for r in records}:
            mine = [r for r in records if r[R.TENANT] == tenant]
            denied = governance.denied(tenant, sorted({r[R.SUBJECT] for r in mine}))
            keep += [r for r in mine if r[R.SUBJECT] not in denied]
        restored = sum(store.insert_missing([r for r in keep if r[R.MODEL] == model], model)
                       for model in {r[R.MODEL] for r in keep})
        if restored:
            governance.audit.record("rows.restored", collection=store.collection, count=restored)
        self.clear()
        return restored


def reencrypt(source: MilvusStore, target: MilvusStore, governance: Governance, tenant: str,
              where: Optional[str] = None) -> int:
    """Write a tenant's rows of ``source`` into ``target`` under the current tenant key and
    the current beta (fresh nonces), from the decrypted rows: no re-embedding. ``target``
    may be ``source`` itself (re-keying in place: same ids, upserted, each page journaled
    first, see :class:`Journal`). Rows of subjects being erased are left as they are.

    Args:
        where: the rows to take (a filter expression); default every row of ``tenant``.

    Returns:
        Rows written.
    """
    journal = Journal(governance, source)
    journal.replay(source, governance)  # a crashed rewrite's rows first: they have no other copy
    written = 0
    for page in decrypted_pages(source, governance, tenant, where=where):
        if not page:
            continue
        dim = len(page[0][R.VECTOR])
        crypto = governance.tenant_crypto(tenant, identity=False)  # the embed job's protect stage writes alike
        if governance.encryption:
            keys = governance.data_keys(tenant, sorted({r[R.SUBJECT] for r in page}), create=True)
            page = [r for r in page if r[R.SUBJECT] in keys]  # others are being erased
            records = crypto.protect(page, keys)
        else:
            records = [{**r, R.VECTOR: [float(x) for x in r[R.VECTOR]], R.NONCE: "", R.KEY_ID: ""} for r in page]
        if not records:
            continue
        if target is not source:
            target.ensure_collection(dim, records[0][R.MODEL])
            written += target.upsert(records)
            continue
        journal.write(records)
        written += target.upsert(records)
        journal.clear()
    return written


def stale_filter(tenant: str, version: int, encryption: bool) -> str:
    """The tenant's rows not under key ``version``: what a rotation to it still has to
    rewrite. Without encryption, rows carry no key (empty ``key_id``) and are never stale."""
    expr = f'{build_filter(tenant)} and not ({R.NONCE} like "{version}:%")'
    return expr if encryption else f'{expr} and {R.KEY_ID} != ""'


def rekey(store: MilvusStore, governance: Governance, tenant: str, max_passes: int = MAX_PASSES,
          after_pass: Optional[Callable[[int, int], None]] = None) -> dict:
    """Rotate a tenant's vector key: re-encrypt its rows in every collection under a new key
    version, then retire the old ones. Pseudonyms and row ids do not change (they come from
    the tenant's identity key, which is never rotated).

    A writer that took the old key before the rotation (an embed job's batch in flight) can
    still add rows under it after a pass has scanned past them, so passes repeat, each a
    fresh Strong read of the rows not under the new version, until one finds nothing left
    to rewrite; only then are old versions retired (rows of subjects being erased need no
    tenant key: their data keys are gone or going). Resumable: a re-run after a crash rotates
    again and rewrites whatever is not under the newest version.

    Args:
        max_passes: passes before giving up, old versions kept.
        after_pass: called with (pass number, rows written) after each pass (progress; tests).

    Returns:
        ``{"tenant", "from_version", "to_version", "rows", "passes", "retired"}``.

    Raises:
        GovernanceError: rows under an old version still appeared in the last pass; nothing
            was retired and nothing is lost (run it again once the writers are done).
    """
    old, _ = governance.tenant_key(tenant)
    new = governance.keys.rotate_tenant_key(tenant)
    stale = stale_filter(tenant, new, governance.encryption)
    rows = 0
    for passes in range(1, max_passes + 1):
        written = sum(reencrypt(s, s, governance, tenant, stale) for s in store.each_collection())
        rows += written
        if after_pass is not None:
            after_pass(passes, written)
        if not written:
            break
    else:
        governance.audit.record("tenant.rekey_unsettled", tenant=tenant, count=rows, version=new, passes=max_passes)
        raise GovernanceError(
            f"rows of tenant {tenant!r} under an old key version kept appearing for {max_passes} passes (an embed job"
            f" still writing with it?); {rows} rows are under version {new}, the old versions are kept so none is"
            " stranded: run `pixlake rekey` again once the writers are done")
    retired = [v for v in governance.live_versions(tenant) if v < new]
    for version in retired:
        governance.keys.retire_tenant_key(tenant, version)
    governance.audit.record("tenant.rekeyed", tenant=tenant, count=rows, previous=old, version=new)
    return {"tenant": tenant, "from_version": old, "to_version": new, "rows": rows, "passes": passes,
            "retired": retired}
