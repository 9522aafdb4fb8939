"""Ray Serve deployments behind the HTTP ingress: a batched query encoder and a searcher.

They reach torch and Milvus only through ``pixlake.platform``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Optional

import numpy as np
from ray import serve

log = logging.getLogger(__name__)

# Small batches and a short wait: a lone query pays at most a few ms, a burst shares one forward pass.
MAX_BATCH, BATCH_WAIT_S = 32, 0.005
# How often each replica looks for erasures taken elsewhere, to evict what it caches.
ERASURE_POLL_S = 1.0
# Live uploads are written in batches: a burst shares one protect call and one store write.
WRITE_BATCH, WRITE_WAIT_S = 64, 0.005
# Milvus's bound on how stale a Bounded read may be (its gracefulTime default).
BOUNDED_STALENESS_MS = 5000.0


@serve.deployment(name="QueryEncoder", max_ongoing_requests=128)
class QueryEncoder:
    """Embeds query texts and prepared image pixels in batches (``@serve.batch``)."""

    def __init__(self, model: str, pretrained: Optional[str]):
        from pixlake.platform.encoder import load_encoder
        from pixlake.serve.metrics import Metrics

        self.encoder = load_encoder(model, pretrained)
        self.metrics = Metrics(ingest=False)

    def info(self) -> dict[str, Any]:
        """Fingerprint, dimension and preprocessing of the loaded model."""
        e = self.encoder
        return {"fingerprint": e.fingerprint, "dim": e.dim, "preprocess": e.preprocess}

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def embed_text(self, texts: list[str]) -> list[np.ndarray]:
        """One vector per text."""
        self.metrics.observe_batch("text", len(texts))
        # Off the event loop, so requests keep queueing for the next batch meanwhile.
        return list(await asyncio.to_thread(self.encoder.embed_texts, texts))

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def embed_pixels(self, pixels: list[np.ndarray]) -> list[np.ndarray]:
        """One vector per prepared image (uint8 HWC at the model's input size)."""
        self.metrics.observe_batch("image", len(pixels))
        return list(await asyncio.to_thread(self.encoder.embed_pixels, np.stack(pixels)))

    def metrics_text(self) -> bytes:
        """This replica's Prometheus exposition (encoder batch sizes)."""
        return self.metrics.render()[0]


@serve.deployment(name="Searcher", max_ongoing_requests=64)
class Searcher:
    """Owns the store and the governance that decrypts and re-ranks its candidates.
    On milvus-lite exactly one replica may exist (one process per database).

    It serves the live name through :class:`~pixlake.platform.lifecycle.LiveCollection`:
    a ``pixlake reindex`` promotion or a ``pixlake rollback`` is followed within a second,
    with no query failing, when the new version holds this encoder's embeddings."""

    def __init__(self, settings: Any, max_rows_per_tenant: Optional[int] = None):
        from pixlake.platform.collection import open_collection
        from pixlake.platform.lifecycle import LiveCollection

        opened = open_collection(settings)
        opened.store.keep_local_index(settings.store.local_index_min_rows)  # milvus-lite only
        self.collection = LiveCollection(opened)
        self.owned_sources = settings.governance.owned_sources
        # Erasures running on this replica's threads. Serve may call start_erasure on several
        # threads at once; the lock makes "find the id, see it is not running, start it" one
        # step, so a second request for the subject joins the first (same id, no second run).
        # Across processes, Eraser.run's lock file does the same.
        self._erasing: set[str] = set()
        self._erasing_lock = threading.Lock()
        # Live uploads: one write batch at a time in this replica (an id checked and written
        # by one writer), and each tenant's row count for serve.max_rows_per_tenant.
        self.max_rows_per_tenant = max_rows_per_tenant
        self._write_lock = threading.Lock()
        self._rows: dict[str, int] = {}
        threading.Thread(target=self._evict_erased, daemon=True, name="pixlake-erasure-poll").start()

    def _evict_erased(self) -> None:
        # Every replica polls the shared deny-list, so an erasure taken by any replica (or
        # by `pixlake erase`) evicts the subject's data keys from this one's cache too.
        while True:
            time.sleep(ERASURE_POLL_S)
            try:
                self.collection.governance.sync_erasures()
            except Exception:  # a poll that fails is retried at the next tick
                log.exception("erasure poll failed")

    def erasures_since(self, cursor: int) -> tuple[int, list[str]]:
        """Tenants with a subject erased after ``cursor`` (0: ever), and the next cursor: the
        ingress replicas poll it to drop their thumbnail caches."""
        cursor, tenants = self.collection.governance.ledger.denied_since(cursor)
        return cursor, sorted(tenants)

    def search(self, vector: np.ndarray, k: int, tenant: str, meta: Optional[dict], min_score: Optional[float] = None,
               collapse: bool = False) -> list[dict]:
        """Hits for one query vector in one tenant, under a structured metadata filter."""
        return self.collection.search(vector, k=k, tenant=tenant, meta=meta, min_score=min_score, collapse=collapse)

    def similar(self, item_id: str, k: int, tenant: str, meta: Optional[dict], min_score: Optional[float] = None,
                collapse: bool = False) -> Optional[list[dict]]:
        """Hits for one of the tenant's items' own vector, the item left out; None when the
        tenant has no such item (or is erasing its subject)."""
        return self.collection.similar(tenant, item_id, k, meta, min_score=min_score, collapse=collapse)

    def item(self, tenant: str, item_id: str) -> Optional[dict]:
        """Where one of the tenant's items came from (its opened ``source``) and its keyed
        ``content_hash``; None when the tenant has no such row or is erasing its subject."""
        row = self.collection.item(tenant, item_id)
        return None if row is None else {"source": row["source"], "content_hash": row["content_hash"]}

    # --- live uploads (POST, GET, DELETE /v1/items) --------------------------------------------

    def _ingest(self):
        from pixlake.platform.ingest import LiveIngest

        return LiveIngest(self.collection.store, self.collection.governance)

    @property
    def searchable_after_ms(self) -> float:
        """How long after a write this replica's searches see it: at once through its own
        client (milvus-lite, or a server read at strong or session consistency)."""
        from pixlake.platform.settings import LITE

        store = self.collection.store
        return BOUNDED_STALENESS_MS if store.backend != LITE and store.search_consistency == "bounded" else 0.0

    def prepare_upload(self, tenant: str, subject: Optional[str], data: bytes, meta: Any, fingerprint: str) -> dict:
        """Identify an upload and check it before it is embedded (the keys stay in this
        process). Returns ``{"status": "exists"|"new", "id", "upload"?}`` or ``{"status":
        "refused", "code", "message"}``: an erased subject, bad metadata, another encoder, a
        full quota."""
        from pixlake.platform.ingest import EXISTS, IngestRefused

        try:
            if fingerprint != self.collection.model:
                raise IngestRefused("model_mismatch", f"the collection holds embeddings of {self.collection.model}; "
                                                      f"this service's encoder makes {fingerprint}")
            ingest = self._ingest()
            upload = ingest.identify(tenant, subject, data, meta)
            if ingest.check(upload, self.collection.model) == EXISTS:
                return {"status": "exists", "id": upload.id}
            self._check_quota(tenant, 0)
        except IngestRefused as e:
            return {"status": "refused", "code": e.code, "message": str(e)}
        return {"status": "new", "id": upload.id, "upload": upload}

    def _tenant_rows(self, tenant: str) -> int:
        if tenant not in self._rows:
            from pixlake.platform.store import build_filter

            self._rows[tenant] = self.collection.store.count(build_filter(tenant))
        return self._rows[tenant]

    def _check_quota(self, tenant: str, pending: int) -> None:
        from pixlake.platform.ingest import IngestRefused

        if self.max_rows_per_tenant is not None and self._tenant_rows(tenant) + pending >= self.max_rows_per_tenant:
            raise IngestRefused("quota_exceeded", f"the tenant holds {self.max_rows_per_tenant} rows, its quota "
                                                  "(serve.max_rows_per_tenant)")

    @serve.batch(max_batch_size=WRITE_BATCH, batch_wait_timeout_s=WRITE_WAIT_S)
    async def write_upload(self, uploads: list[Any]) -> list[dict]:
        """Protect and write embedded uploads, batched across concurrent requests; each
        one's ``{"status": created|exists|erased_subject|quota_exceeded, "searchable_after_ms"}``."""
        return await asyncio.to_thread(self._write, uploads)

    def _write(self, uploads: list[Any]) -> list[dict]:
        from pixlake.platform.ingest import CREATED, IngestRefused

        with self._write_lock:
            status: list[Optional[str]] = [None] * len(uploads)
            todo, pending = [], {}
            for n, u in enumerate(uploads):
                try:
                    self._check_quota(u.tenant, pending.get(u.tenant, 0))
                except IngestRefused as e:
                    status[n] = e.code
                    continue
                pending[u.tenant] = pending.get(u.tenant, 0) + 1
                todo.append(n)
            written = self._ingest().write([uploads[n] for n in todo], self.collection.model)
            for n, s in zip(todo, written):
                status[n] = s
                if s == CREATED and uploads[n].tenant in self._rows:
                    self._rows[uploads[n].tenant] += 1
        after = self.searchable_after_ms
        return [{"status": s, "searchable_after_ms": after} for s in status]

    def item_info(self, tenant: str, item_id: str) -> Optional[dict]:
        """One of the tenant's items: ``{"id", "meta", "added_at"}`` (never the vector); None
        when the tenant has no such row or is erasing its subject."""
        from pixlake.platform.ingest import describe_item

        row = self.collection.item(tenant, item_id)
        return None if row is None else describe_item(row)

    def delete_item(self, tenant: str, item_id: str) -> bool:
        """Delete one of the tenant's items from the served collection; False when the tenant
        has no such row (another tenant's id included)."""
        if self.collection.item(tenant, item_id) is None:
            return False
        with self._write_lock:
            deleted = self.collection.store.delete(ids=[item_id])
            if tenant in self._rows:
                self._rows[tenant] -= deleted
        return True

    def keyed_content_hash(self, tenant: str, digest: str) -> str:
        """The tenant's keyed hash of a plain SHA-256 hex ``digest`` (what a row's
        ``content_hash`` is): the ingress checks a thumbnail's bytes are the row's while the
        tenant's identity key stays in this process."""
        return self.collection.governance.tenant_crypto(tenant, vectors=False).content_hash(digest)

    def start_erasure(self, tenant: str, subject: str) -> str:
        """Start (or resume) the erasure of a raw subject id; it runs on a thread here,
        the process that owns the store. Returns the erasure id: the running one's when the
        subject's erasure is under way already (no second run starts)."""
        eraser = self._eraser()
        with self._erasing_lock:
            erasure_id, _ = eraser.start(tenant, subject)  # the unfinished erasure's id, if any
            if erasure_id in self._erasing:
                return erasure_id
            self._erasing.add(erasure_id)
        threading.Thread(target=self._run_erasure, args=(eraser, erasure_id), daemon=True).start()
        return erasure_id

    def _eraser(self):
        from pixlake.platform.compliance.erasure import Eraser

        return Eraser(self.collection.store, self.collection.governance, self.owned_sources)

    def _run_erasure(self, eraser, erasure_id: str) -> None:
        try:
            eraser.run(erasure_id, wait=False)  # another process running it: leave it to that one
        except Exception:  # recorded in the ledger; a new request for the subject resumes it
            log.exception("erasure %s failed", erasure_id)
            eraser.governance.ledger.record(erasure_id, "error", 0, "failed")
        finally:
            with self._erasing_lock:
                self._erasing.discard(erasure_id)

    def erasure_receipt(self, tenant: str, erasure_id: str) -> Optional[dict]:
        """The receipt of one of the tenant's erasures, or None."""
        from pixlake.platform.errors import GovernanceError

        try:
            receipt = self._eraser().receipt(erasure_id)
        except GovernanceError:
            return None
        return receipt if receipt["tenant"] == tenant else None

    def describe(self, tenant: str) -> dict:
        """Name, the tenant's own row count, model fingerprint, index type, encryption."""
        from pixlake.platform.store import build_filter

        return {**self.collection.describe(), "rows": self.collection.store.count(build_filter(tenant))}

    def ready(self) -> bool:
        """Whether Milvus answers and the collection exists."""
        try:
            return self.collection.store.exists()
        except Exception:  # readiness reports, never raises
            return False
