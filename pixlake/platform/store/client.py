"""The store's client facade: :class:`MilvusStore`, one collection of pixlake records
over ``pymilvus.MilvusClient``, the same API from milvus-lite to a cluster.

The interface (tested on both backends by ``tests/platform/test_store_conformance.py``),
with argument shapes from ``MilvusClient``:

- open and close: ``MilvusStore(uri, collection, ...)``, :meth:`MilvusStore.configured`,
  ``with ... as store:``, :meth:`~MilvusStore.close` (idempotent);
- the collection: :meth:`~MilvusStore.ensure_collection`, :meth:`~MilvusStore.exists`,
  :meth:`~MilvusStore.model`, :meth:`~MilvusStore.describe`, :meth:`~MilvusStore.drop`;
- rows: :meth:`~MilvusStore.upsert`, :meth:`~MilvusStore.insert_missing`,
  :meth:`~MilvusStore.existing_ids`, :meth:`~MilvusStore.delete` (ids or a filter, never
  both), :meth:`~MilvusStore.flush`;
- reads: :meth:`~MilvusStore.search`, :meth:`~MilvusStore.query`,
  :meth:`~MilvusStore.pages`, :meth:`~MilvusStore.count`, all taking filters from
  :func:`~pixlake.platform.store.filters.build_filter`;
- the database's other collections and aliases (:class:`~.admin.CollectionAdmin`):
  ``collections``, ``for_collection``, ``each_collection``, ``alias_target``,
  ``point_alias``, ``rename``, ``compact``, ``wait_for_index``;
- :meth:`~MilvusStore.retry_count`: calls retried while a server was away (:mod:`.retry`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

from pixlake.platform import records as R
from pixlake.platform.errors import ConfigError, PixlakeError, StoreError
from pixlake.platform.settings import DEFAULT_RETRY_DEADLINE_S, LITE, SERVER, backend_of
from pixlake.platform.store import backends
from pixlake.platform.store.admin import CollectionAdmin
from pixlake.platform.store.backends import check_db_location
from pixlake.platform.store.filters import literal
from pixlake.platform.store.index import IndexChoice, planned_index, recorded_index
from pixlake.platform.store import local_index
from pixlake.platform.store.retry import store_call, transient
from pixlake.platform.store.schema import check_compatible, create_collection

log = logging.getLogger(__name__)

FAULT_ENV = "PIXLAKE_FAULT_STORE"  # tests: a crash point, see _fault


def _fault(point: str) -> None:
    """Tests: exit the process abruptly at ``point`` when ``PIXLAKE_FAULT_STORE`` names it (a crash)."""
    if os.environ.get(FAULT_ENV) == point:
        log.error("fault injection: exiting at %s", point)
        os._exit(137)


class MilvusStore(CollectionAdmin):
    """One Milvus collection of pixlake records; a context manager that closes it.

    Args:
        uri: milvus-lite path (``./pixlake.db``) or server URI (``http://host:19530``).
        collection: collection name.
        index_plan: a saved index plan (JSON path) for the collection a server creates; an
            existing collection keeps the index (and search parameters) it was built with.
        retry_deadline_s: how long a call (and opening) retries a Milvus server that is down
            or restarting before it fails; milvus-lite runs in-process and is not retried.
        search_consistency: ``strong`` (read-your-writes) or ``bounded`` for searches.

    Raises:
        StoreError: the database cannot be opened (unwritable path, locked, unreachable).
        ConfigError: the index plan cannot be read.
    """

    def __init__(self, uri: str, collection: str, index_plan: Optional[Path] = None,
                 retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S, search_consistency: str = "strong"):
        self.uri = uri
        self.collection = collection
        self.backend = backend_of(uri)
        self.index_plan = index_plan
        self.retry_deadline_s = retry_deadline_s
        self.search_consistency = search_consistency
        self.retries = 0  # calls retried because the server was away (the job reports them)
        self.index: IndexChoice = planned_index(self.backend, index_plan)
        self._client = self._connect()
        self._closed = False
        self._local = local_index.LocalIndexHolder(self)  # milvus-lite only, once keep_local_index asks
        if self._client.has_collection(collection):
            self._client.load_collection(collection)
            self.index = recorded_index(self._client.describe_collection(collection).get("description")) or self.index

    @classmethod
    def configured(cls, store: Any) -> "MilvusStore":
        """The store of :class:`~pixlake.platform.settings.StoreSettings`."""
        return cls(store.db, store.collection, store.index_plan, store.retry_deadline_s, store.search_consistency)

    def __enter__(self) -> "MilvusStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _connect(self):
        from pymilvus import MilvusClient

        check_db_location(self.uri)
        deadline = time.monotonic() + (backends.LOCK_WAIT_S if self.backend == LITE else self.retry_deadline_s)
        while True:
            try:
                client = MilvusClient(self.uri)
                if self.backend == LITE:
                    backends.lite_opened(self.uri)
                return client
            except Exception as e:
                # pymilvus reports milvus-lite's lock conflict only as "Open local milvus
                # failed"; the location was checked writable above, so a lock is the likely
                # cause: a previous job's store process may still be exiting.
                # A server that is down or restarting gets the same wait as any call.
                if (self.backend == LITE or transient(e)) and time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                hint = " (is another process, e.g. a running job, holding it open?)" if self.backend == LITE else ""
                raise StoreError(f"cannot open Milvus at {self.uri}{hint}: {e}") from e

    def retry_count(self) -> int:
        """Calls retried so far because the server was down or restarting."""
        return self.retries

    # --- collection -------------------------------------------------------------------

    @store_call
    def exists(self, name: Optional[str] = None) -> bool:
        """Whether the collection (or the collection or alias ``name`` of this database) exists."""
        return self._client.has_collection(name or self.collection)

    @store_call
    def ensure_collection(self, dim: int, model: str) -> IndexChoice:
        """Create the collection for ``model`` embeddings of ``dim``, or check the existing one matches.

        Raises:
            StoreError: the existing collection holds another dimension or another encoder.
        """
        if self.exists():
            check_compatible(self._client, self.collection, dim, model)
            return self.index
        # A partition key keeps one tenant's search inside its own partitions on a server.
        create_collection(self._client, self.collection, dim, self.index, partition_by_tenant=self.backend == SERVER)
        log.info("created collection %s (%s, %s, dim %d)", self.collection, self.backend, self.index.index_type, dim)
        return self.index
    @store_call
    def model(self) -> Optional[str]:
        """Encoder fingerprint of the collection's rows, or None when it is empty or missing."""
        if not self.exists():
            return None
        rows = self._client.query(self.collection, filter="", output_fields=[R.MODEL], limit=1, consistency_level="Strong")
        return rows[0][R.MODEL] if rows else None

    def describe(self) -> dict:
        """Name, backend, row count, model fingerprint and index type of the collection."""
        index = self._client.describe_index(self.collection, R.VECTOR) if self.exists() else {}
        return {
            "collection": self.collection,
            "backend": self.backend,
            "rows": self.count() if self.exists() else 0,
            "model": self.model(),
            "index_type": index.get("index_type"),
            "index_params": self.index.params,
            "search_params": self.index.search_params,
            "rerank_factor": self.index.rerank_factor,
            "index_note": self.index.reason,
            # a server reports how much of the collection its index covers
            **{k: index[k] for k in ("indexed_rows", "pending_index_rows") if k in index},
            "local_index_rows": self._local.rows,  # None unless searches go through a local index
        }

    # --- rows ---------------------------------------------------------------------------

    @store_call
    def upsert(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert or replace rows by id (idempotent); returns how many were written."""
        if not rows:
            return 0
        if self.backend == SERVER:
            # Milvus 2.3 upserts rows into the wrong partition of a partition-key collection
            # (milvus-io/milvus#30607), where tenant-filtered searches never see them: delete
            # and insert instead. Not atomic: a caller rewriting rows whose only copy is here
            # (re-keying) journals them first (pixlake.platform.compliance.portability).
            self._client.delete(self.collection, ids=[r[R.ID] for r in rows])
            _fault("upsert.deleted")
            return int(self._client.insert(self.collection, [dict(r) for r in rows])["insert_count"])
        written = int(self._client.upsert(self.collection, [dict(r) for r in rows])["upsert_count"])
        local_index.written(self.uri, self.collection, rows)
        return written

    def insert_missing(self, rows: Sequence[Mapping[str, Any]], model: str) -> int:
        """Write the rows whose id is not yet stored for ``model``; returns how many were new.

        Repeats (same id twice in ``rows``, or already stored) are not written again, so
        callers can count exactly what a run added. Check and write are two calls: a job
        makes the pair atomic by writing through one store actor (milvus-lite) or by giving
        each id one writer (a server; :mod:`pixlake.platform.pipeline.claims`).
        """
        return len(self.insert_new(rows, model))

    @store_call
    def insert_new(self, rows: Sequence[Mapping[str, Any]], model: str) -> list[str]:
        """:meth:`insert_missing`, returning the ids it wrote (live ingest answers each
        upload ``created`` or ``exists`` from them)."""
        unique = {r[R.ID]: r for r in rows}
        existing = self.existing_ids(unique, model)
        new = [dict(r) for i, r in unique.items() if i not in existing]
        if new:
            self._client.insert(self.collection, new)
            local_index.written(self.uri, self.collection, new)
        return [r[R.ID] for r in new]

    @store_call
    def existing_ids(self, ids: Iterable[str], model: str, consistency: str = "Strong") -> set[str]:
        """The subset of ``ids`` already stored with embeddings from ``model``.

        ``consistency="Bounded"`` may miss rows written in the last seconds (Milvus's
        graceful time, 5 s by default) but does not wait: on a Milvus 2.3 server a Strong read
        waits for the next time tick, measured at 370-390 ms per call against 3-5 ms Bounded."""
        ids = list(ids)
        if not ids:
            return set()
        # A primary-key lookup alone, the model compared here: with `and model == ...` in the
        # filter milvus-lite scans every row, and the lookup (twice per image in a job) grew
        # with the collection: 27 ms per 512 ids at 10k rows, 86 ms at 60k, 16 ms without.
        expr = f"{R.ID} in [{', '.join(literal(i) for i in ids)}]"
        rows = self._client.query(self.collection, filter=expr, output_fields=[R.ID, R.MODEL], consistency_level=consistency)
        return {r[R.ID] for r in rows if r[R.MODEL] == model}

    @store_call
    def search(
        self,
        vectors: Sequence[Sequence[float]],
        k: int = 10,
        filter: str = "",
        output_fields: Sequence[str] = (R.SOURCE, R.META),
    ) -> list[list[dict]]:
        """Nearest rows for each query vector.

        Args:
            vectors: query vectors (L2-normalised, same encoder as the collection).
            k: hits per query.
            filter: expression from :func:`~pixlake.platform.store.filters.build_filter` (never raw client input).
            output_fields: row fields returned beside id and score.

        Returns:
            One list per query of ``{"id", "score", <output_fields>...}``, best first.
        """
        if self._local.ready:  # stopped when the collection is dropped (one process writes milvus-lite)
            return self._local.search(vectors, k, filter, output_fields)
        if not self.exists():
            raise StoreError(f"collection {self.collection} does not exist in {self.uri}")
        return self._milvus_search(vectors, k, filter, output_fields)

    def keep_local_index(self, min_rows: int) -> None:
        """Answer searches from an in-process copy of this collection's rows, searched through
        HNSW, once it holds ``min_rows`` rows (milvus-lite only; built on a thread, milvus-lite
        answers until then; :mod:`.local_index`). For a long-lived searcher: the Serve app's
        Searcher calls it."""
        self._local.start(min_rows)

    @property
    def local_index_min_rows(self) -> Optional[int]:
        """What :meth:`keep_local_index` was given (None: no local index kept)."""
        return self._local.min_rows

    def _milvus_search(self, vectors, k, filter, output_fields) -> list[list[dict]]:
        res = self._client.search(
            self.collection,
            data=[list(map(float, v)) for v in vectors],
            limit=k,
            filter=filter,
            output_fields=list(output_fields),
            search_params=self.index.search_params_for(k),
            # Strong: read-your-writes. Bounded skips a server's wait for it; an erased subject's
            # rows are kept out by the deny-list (Governance.reveal) either way.
            consistency_level=self.search_consistency.capitalize(),
        )
        return [[{"id": h["id"], "score": float(h["distance"]), **h["entity"]} for h in hits] for hits in res]

    @store_call
    def query(self, filter: str, output_fields: Sequence[str]) -> list[dict]:
        """Every row matching ``filter`` (read with Strong consistency), with ``output_fields``."""
        return [row for page in self.pages(filter, output_fields) for row in page]

    def pages(self, filter: str, output_fields: Sequence[str], size: int = 1000) -> Iterator[list[dict]]:
        """Rows matching ``filter`` in pages of ``size`` (bounded memory over any collection),
        read with Strong consistency: every write acknowledged before the call is seen."""
        if not self.exists():
            return
        if self.backend == SERVER:
            # pymilvus's iterator reads a 2.3 server at a client-side timestamp without the
            # Strong wait: rows written just before were missing (0 of 50, 6 ms). A Strong
            # query first waits until the server has applied every earlier write.
            self.count(filter)
        try:
            iterator = self._client.query_iterator(self.collection, batch_size=size, filter=filter,
                                                   output_fields=list(output_fields), consistency_level="Strong")
            while page := iterator.next():
                yield page
            iterator.close()
        except PixlakeError:
            raise
        except Exception as e:
            raise StoreError(f"query on {self.collection} in {self.uri} failed: {e}") from e

    @store_call
    def flush(self) -> None:
        """Persist every write so far: milvus-lite moves its write-ahead log into segment
        files under an atomically committed manifest; a server seals its growing segments
        into object storage. The embed job calls this before it reports success."""
        self._client.flush(self.collection)

    @store_call
    def count(self, filter: str = "") -> int:
        """Rows matching ``filter`` (all rows when empty), read with Strong consistency."""
        if not self.exists():
            return 0
        res = self._client.query(
            self.collection, filter=filter, output_fields=["count(*)"], consistency_level="Strong"
        )
        return int(res[0]["count(*)"])

    @store_call
    def delete(self, ids: Optional[Sequence[str]] = None, filter: Optional[str] = None) -> int:
        """Delete rows by ids or by filter (exactly one of them); returns the count deleted."""
        if (ids is None) == (filter is None):
            raise ConfigError("delete takes ids or a filter, not both and not neither")
        if ids is not None and not ids:
            return 0
        if ids is None and not filter:
            raise ConfigError("delete with an empty filter would erase the collection; drop it instead")
        before = self.count()
        if ids is None and local_index.kept(self.uri, self.collection):
            ids = [r[R.ID] for r in self.query(filter, [R.ID])]  # to forget them in the local index too
            filter = None
        if ids is not None:
            if ids:
                self._client.delete(self.collection, ids=list(ids))
                local_index.forgotten(self.uri, self.collection, ids)
        else:
            self._client.delete(self.collection, filter=filter)
        return before - self.count()

    @store_call
    def drop(self) -> None:
        """Drop the collection (tests and re-creation)."""
        if self.exists():
            self._client.drop_collection(self.collection)
        local_index.dropped(self.uri, self.collection)
        self._local.stop()

    def close(self) -> None:
        """Release the client and, for milvus-lite, its in-process server and file lock
        once no other store of this process uses the same database. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._local.stop()
        self._client.close()
        if self.backend == LITE:
            backends.lite_closed(self.uri)
