"""An in-process HNSW index over a milvus-lite collection's stored vectors, for a long-lived
searcher (the Serve app's Searcher).

milvus-lite's own search costs time in proportion to the rows even with its HNSW index
loaded: a top-50 over 512-d rows took 22 ms at 30k rows and 62 ms at 100k on the 2-core
development machine, whatever ``ef`` (docs/capacity.md), where faiss's HNSW answers in
well under a millisecond. So a searcher that lives long enough to build one keeps this
index of the same vectors Milvus stores (ciphertexts when encryption is on: nothing here is
plaintext) and uses it only to propose candidate ids. The rows are then read back from
milvus-lite by id under the caller's filter, so a deleted, erased, filtered-out or other
tenant's row is never returned because of this index; it can only cost recall, and the
store falls back to milvus-lite's search when too few candidates survive the filter.

Deleting through the store zeroes the deleted rows' vectors here too, so an erased
subject's ciphertext does not outlive its row in this process's memory either.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Iterable, Sequence

import numpy as np

from pixlake.platform import records as R
from pixlake.platform.settings import LITE
from pixlake.platform.store.filters import Filter, literal

log = logging.getLogger(__name__)

HNSW_M, HNSW_EF_CONSTRUCTION = 32, 40


def _unit(vectors: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (Milvus's COSINE equals inner product on them)."""
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)


class LocalIndex:
    """HNSW (faiss, inner product on unit vectors) from row ids to stored vectors.

    Thread-safe: searches, additions and deletions take one lock (faiss's HNSW may not be
    searched while it grows)."""

    def __init__(self, dim: int):
        import faiss

        self.dim = dim
        self._index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        self._index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        self._ids: list[str | None] = []  # position -> row id (None: deleted)
        self._where: dict[str, int] = {}  # row id -> its current position
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._where)

    @property
    def positions(self) -> int:
        """Vectors held, deleted ones included (what a search can return at most)."""
        return self._index.ntotal

    def add(self, ids: Sequence[str], vectors: Sequence[Sequence[float]] | np.ndarray) -> None:
        """Index rows; a row id indexed before is replaced (its old vector zeroed)."""
        if not len(ids):
            return
        x = _unit(vectors)
        with self._lock:
            self._zero([i for i in ids if i in self._where])
            start = len(self._ids)
            self._index.add(x)
            for offset, row_id in enumerate(ids):
                self._ids.append(row_id)
                self._where[row_id] = start + offset

    def forget(self, ids: Iterable[str]) -> None:
        """Drop rows: their vectors are overwritten with zeros and never proposed again."""
        with self._lock:
            self._zero(list(ids))

    def _zero(self, ids: list[str]) -> None:
        import faiss

        positions = [self._where.pop(i) for i in ids if i in self._where]
        if not positions:
            return
        stored = faiss.rev_swig_ptr(faiss.downcast_index(self._index.storage).get_xb(), self._index.ntotal * self.dim)
        stored = stored.reshape(self._index.ntotal, self.dim)  # a view: writing it writes the index
        for p in positions:
            stored[p] = 0.0
            self._ids[p] = None

    def search(self, vectors: Sequence[Sequence[float]] | np.ndarray, n: int) -> list[list[tuple[str, float]]]:
        """Up to ``n`` ``(row id, cosine)`` candidates per query, best first."""
        q = _unit(vectors)
        with self._lock:
            n = min(n, self._index.ntotal)
            if n == 0:
                return [[] for _ in range(len(q))]
            self._index.hnsw.efSearch = max(64, n)
            scores, positions = self._index.search(q, n)
            return [[(self._ids[p], float(s)) for s, p in zip(row_s, row_p) if p >= 0 and self._ids[p] is not None]
                    for row_s, row_p in zip(scores, positions)]


# Candidates asked of the index per hit wanted, and this many more: they must survive the
# caller's filter (a tenant's share of the rows) and deletions since. Reading them back costs
# about 0.08 ms each at 512-d (116 ids: 10 ms, 264: 23 ms, at 100k rows).
OVERFETCH, OVERFETCH_MIN = 2, 16
BUILD_PAGE = 5000


# The local indexes of this process by (database, collection): a write or delete through any
# store of the collection reaches them all (an erasure deletes through its own store objects;
# milvus-lite lets no other process write the database meanwhile).
_KEPT: dict[tuple[str, str], "weakref.WeakSet[LocalIndexHolder]"] = {}
_KEPT_LOCK = threading.Lock()


def _holders(uri: str, collection: str) -> list["LocalIndexHolder"]:
    with _KEPT_LOCK:
        return [h for h in _KEPT.get((uri, collection), ()) if h.active]


def kept(uri: str, collection: str) -> bool:
    """Whether any store of this process keeps a local index of the collection."""
    return bool(_holders(uri, collection))


def written(uri: str, collection: str, rows) -> None:
    """Rows just written to the collection (their vectors as stored) reach its local indexes."""
    for holder in _holders(uri, collection):
        holder.written(rows)


def forgotten(uri: str, collection: str, ids) -> None:
    """Rows just deleted from the collection: its local indexes zero their vectors."""
    for holder in _holders(uri, collection):
        holder.forget(ids)


class LocalIndexHolder:
    """A store's local index: off until :meth:`start`, then built on a thread and kept
    current by every write and delete this process makes to the collection (milvus-lite
    has one writing process: this one)."""

    def __init__(self, store):
        self.store = store
        self.min_rows: int | None = None
        self._index: LocalIndex | None = None
        self._writes = 0  # writes through the store while a build reads the rows
        self._stopped = threading.Event()

    @property
    def active(self) -> bool:
        """Whether an index is kept (building or built)."""
        return self.min_rows is not None and not self._stopped.is_set()

    @property
    def ready(self) -> bool:
        """Whether searches go through the index."""
        return self._index is not None and not self._stopped.is_set()

    @property
    def rows(self) -> int | None:
        """Rows in the index searches go through now (None: none, milvus-lite answers)."""
        index = self._index
        return len(index) if index is not None and not self._stopped.is_set() else None

    def start(self, min_rows: int) -> None:
        if self.store.backend != LITE or self.min_rows is not None:
            return
        self.min_rows = min_rows
        with _KEPT_LOCK:
            _KEPT.setdefault((self.store.uri, self.store.collection), weakref.WeakSet()).add(self)
        threading.Thread(target=self._build, daemon=True, name=f"pixlake-local-index-{self.store.collection}").start()

    def stop(self) -> None:
        self._stopped.set()
        self._index = None

    def _build(self) -> None:
        store = self.store
        try:
            while not self._stopped.is_set() and (not store.exists() or store.count() < self.min_rows):
                time.sleep(5.0)  # an empty or small collection: milvus-lite is fast enough there
            while not self._stopped.is_set():
                t0, writes = time.monotonic(), self._writes
                index = None
                for page in store.pages("", [R.ID, R.VECTOR], size=BUILD_PAGE):
                    if self._stopped.is_set():
                        return
                    index = index or LocalIndex(len(page[0][R.VECTOR]))
                    index.add([r[R.ID] for r in page], [r[R.VECTOR] for r in page])
                if writes == self._writes:  # else rows changed under the read: read them again
                    break
            if index is not None and not self._stopped.is_set():
                self._index = index
                log.info("%s: searching through a local HNSW index of %d rows (built in %.1f s)",
                         store.collection, len(index), time.monotonic() - t0)
        except Exception:  # noqa: BLE001 - milvus-lite keeps answering; the index is an accelerator
            if not self._stopped.is_set():
                log.exception("%s: the local index could not be built; searching through milvus-lite", store.collection)

    def written(self, rows) -> None:
        """Rows the store just wrote (their vectors, as stored)."""
        if not self.active:
            return
        self._writes += 1
        if self._index is not None:
            self._index.add([r[R.ID] for r in rows], [r[R.VECTOR] for r in rows])

    def forget(self, ids) -> None:
        """Rows the store just deleted."""
        if not self.active:
            return
        self._writes += 1
        if self._index is not None:
            self._index.forget(ids)

    def search(self, vectors, k: int, filter: str, output_fields) -> list[list[dict]]:
        """The store's search through the index: candidates from it, rows (and the filter)
        from milvus-lite; a query whose candidates run out before ``k`` rows pass the
        filter is searched by milvus-lite itself."""
        index = self._index
        if filter and not isinstance(filter, Filter):
            return self.store._milvus_search(vectors, k, filter, output_fields)  # no Python test of it
        wanted = k * OVERFETCH + OVERFETCH_MIN
        candidates = index.search(vectors, wanted)
        ids = sorted({i for found in candidates for i, _ in found})
        rows = {}
        if ids:
            # ids alone: any other predicate makes milvus-lite scan every row; the filter is
            # tested here instead (Filter.matches decides as Milvus does)
            fields = sorted({R.ID, *output_fields, *(filter.fields if filter else ())})
            expr = f"{R.ID} in [{', '.join(literal(i) for i in ids)}]"
            for row in self.store._client.query(self.store.collection, filter=expr, output_fields=fields):
                if not filter or filter.matches(row):
                    rows[row[R.ID]] = row
        results, short = [], []
        for q, found in enumerate(candidates):
            hits = [{R.ID: i, "score": s, **{f: rows[i][f] for f in output_fields if f != R.ID}}
                    for i, s in found if i in rows][:k]
            if len(hits) < k and wanted < index.positions:
                short.append(q)  # the filter left too few: ask milvus-lite
            results.append(hits)
        if short:
            again = self.store._milvus_search([vectors[q] for q in short], k, filter, output_fields)
            for q, hits in zip(short, again):
                results[q] = hits
        return results
