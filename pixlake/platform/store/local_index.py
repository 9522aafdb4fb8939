"""An in-process copy of a milvus-lite collection, searched through an HNSW index, for a
long-lived searcher (the Serve app's Searcher).

milvus-lite's own search costs time in proportion to the rows even with its HNSW index
loaded (a top-50 over 512-d rows: 22 ms at 30k rows, 62-75 ms at 100k on the 2-core
development machine, whatever ``ef``), and reading rows back costs more than finding them:
any predicate beside a primary-key lookup makes it scan every row, and even a lookup of
116 ids by key took 15 ms plus 6 ms to decode (docs/capacity.md). milvus-lite has one
writing process, this one, so a searcher that lives long enough keeps the collection's rows
itself: every field as stored (ciphertexts and sealed sources when encryption is on:
nothing here is plaintext), kept current by every write and delete the process makes, and
answers a search from them without calling milvus-lite:

1. an HNSW graph over the stored vectors scaled to unit length (faiss ``IndexHNSWSQ``:
   8-bit codes, a quarter of float32's bytes, as good as flat storage at proposing) proposes
   a few hundred positions;
2. each proposal is scored exactly (cosine, as Milvus's ``COSINE``) from the stored float32
   vector and tested against the caller's filter in Python (:meth:`Filter.matches`);
3. the best ``k`` that pass are returned with their stored fields. When the proposals run
   out before ``k`` pass (a tenant with a tiny share of the rows, a narrow filter), the
   proposals widen once, then milvus-lite's own search answers.

Deleting through any store of the process removes the rows here too, and overwrites their
vector and its code with zeros: an erased subject's ciphertext does not outlive its row in
this process's memory.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from pixlake.platform import records as R
from pixlake.platform.settings import LITE
from pixlake.platform.store.filters import Filter

log = logging.getLogger(__name__)

# Graph degree and build effort: efConstruction 100 against 40 took the share of the exact
# top-50 among 200 proposals from 0.92 to 0.98 for text-like queries (30k encrypted rows).
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 100, 256
# Proposals per query: at least this many, or this many per hit wanted; widened this many
# times once when too few pass the filter.
PROPOSE_MIN, PROPOSE_PER_HIT, WIDEN = 200, 4, 8
BUILD_PAGE = 5000
_FIELDS = (*R.SCALAR_FIELDS, R.VECTOR)
_SHARED = (R.TENANT, R.MODEL)  # few distinct values: one string object each


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (Milvus's COSINE is inner product on them)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1), dtype=np.float32)


def _bytes_of(vector: Any, size: int) -> np.ndarray:
    """A faiss std::vector<uint8_t> as a writable numpy view of its first ``size`` bytes."""
    import faiss

    return faiss.rev_swig_ptr(vector.data(), size)


class LocalIndex:
    """Rows by position: their stored fields, their stored vectors (float32, exact) and an
    HNSW graph over the vectors' directions that proposes positions for a query.

    Args:
        dim: the vectors' width.
        sample: stored vectors the 8-bit codes take their per-dimension ranges from (the
            first rows read); a later vector outside them is clipped in its code only.

    Thread-safe: searches, additions and deletions take one lock (faiss's HNSW may not be
    searched while it grows)."""

    def __init__(self, dim: int, sample: np.ndarray):
        import faiss

        self.dim = dim
        self._index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        self._index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        self._index.train(_unit(np.asarray(sample, np.float32)))
        self._vectors = np.zeros((1024, dim), np.float32)  # by position, grown by doubling
        self._rows: list[Optional[dict]] = []  # by position: stored fields (None: deleted)
        self._where: dict[str, int] = {}  # row id -> its current position
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._where)

    @property
    def positions(self) -> int:
        """Vectors held, deleted ones included (what a search can propose at most)."""
        return self._index.ntotal

    def add(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Hold rows as stored (every field, ``vector`` included); a row held before is
        replaced (its old vector zeroed)."""
        if not rows:
            return
        x = np.asarray([r[R.VECTOR] for r in rows], np.float32).reshape(len(rows), self.dim)
        fields = []
        for r in rows:
            row = {f: v for f, v in r.items() if f != R.VECTOR}
            for f in _SHARED:
                if isinstance(row.get(f), str):
                    row[f] = sys.intern(row[f])
            fields.append(row)
        with self._lock:
            self._zero([r[R.ID] for r in rows if r[R.ID] in self._where])
            start = self._index.ntotal
            if start + len(rows) > len(self._vectors):
                grown = np.zeros((max(2 * len(self._vectors), start + len(rows)), self.dim), np.float32)
                grown[:start] = self._vectors[:start]
                self._vectors = grown
            self._vectors[start:start + len(rows)] = x
            self._index.add(_unit(x))
            for offset, row in enumerate(fields):
                self._rows.append(row)
                self._where[row[R.ID]] = start + offset

    def forget(self, ids: Iterable[str]) -> None:
        """Drop rows: their fields go, their vectors and codes are overwritten with zeros."""
        with self._lock:
            self._zero(list(ids))

    def _zero(self, ids: list[str]) -> None:
        import faiss

        positions = [self._where.pop(i) for i in ids if i in self._where]
        if not positions:
            return
        storage = faiss.downcast_index(self._index.storage)
        codes = _bytes_of(storage.codes, self._index.ntotal * storage.code_size).reshape(self._index.ntotal, -1)
        for p in positions:
            self._vectors[p] = 0.0
            codes[p] = 0
            self._rows[p] = None

    def search(self, queries: np.ndarray, n: int, accept: Optional[Callable[[Mapping[str, Any]], bool]] = None,
               ) -> list[Optional[list[tuple[dict, np.ndarray, float]]]]:
        """Up to ``n`` held rows per query that ``accept`` takes, as ``(fields, stored
        vector, cosine)``, best first by exact cosine; None for a query whose proposals ran
        out before ``n`` passed while rows were left unproposed (ask the store itself)."""
        q = np.asarray(queries, np.float32).reshape(-1, self.dim)
        out: list[Optional[list]] = []
        first = max(PROPOSE_MIN, PROPOSE_PER_HIT * n)
        with self._lock:
            for one in q:
                for propose in (first, first * WIDEN):
                    hits = self._best(one, propose, n, accept)
                    if len(hits) >= n or propose >= self._index.ntotal:
                        break
                else:
                    hits = None
                out.append(hits)
        return out

    def _best(self, query: np.ndarray, propose: int, n: int, accept) -> list[tuple[dict, np.ndarray, float]]:
        propose = min(propose, self._index.ntotal)
        if propose == 0:
            return []
        self._index.hnsw.efSearch = max(HNSW_EF_SEARCH, propose)
        _, found = self._index.search(_unit(query[None, :]), propose)
        positions = [p for p in found[0] if p >= 0 and self._rows[p] is not None
                     and (accept is None or accept(self._rows[p]))]
        if not positions:
            return []
        stored = self._vectors[positions]
        norms = np.linalg.norm(stored, axis=1) * float(np.linalg.norm(query))
        scores = stored @ query / np.where(norms > 0, norms, 1)
        best = np.argsort(-scores, kind="stable")[:n]
        return [(self._rows[positions[i]], stored[i], float(scores[i])) for i in best]


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
    """Rows just deleted from the collection: its local indexes drop them and zero their vectors."""
    for holder in _holders(uri, collection):
        holder.forget(ids)


def dropped(uri: str, collection: str) -> None:
    """The collection was dropped: its local indexes stop (the next search asks milvus-lite)."""
    for holder in _holders(uri, collection):
        holder.stop()


@atexit.register
def _stop_all() -> None:
    # A build thread still inside faiss when the interpreter tears down aborts the process
    # ("terminate called without an active exception"): stop them, wait for the page in hand.
    with _KEPT_LOCK:
        holders = [h for kept_ in _KEPT.values() for h in kept_]
    for holder in holders:
        holder.stop()
        holder.join(10.0)


class LocalIndexHolder:
    """A store's local index: off until :meth:`start`, then built on a thread and kept
    current by every write and delete this process makes to the collection (milvus-lite
    has one writing process: this one)."""

    def __init__(self, store):
        self.store = store
        self.min_rows: int | None = None
        self._index: LocalIndex | None = None
        self._writes = 0  # writes through the store since the build began reading
        self._lock = threading.Lock()  # a write and the build's publishing: one before the other
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None

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
        self._thread = threading.Thread(target=self._build, daemon=True,
                                        name=f"pixlake-local-index-{self.store.collection}")
        self._thread.start()

    def stop(self) -> None:
        """Stop keeping the index and free it (searches go to milvus-lite)."""
        self._stopped.set()
        self._index = None

    def join(self, timeout: float) -> None:
        """Wait for the build thread to end (after :meth:`stop`)."""
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _build(self) -> None:
        store = self.store
        try:
            while not (store.exists() and store.count() >= self.min_rows):
                if self._stopped.wait(5.0):  # an empty or small collection: milvus-lite is fast enough there
                    return
            while not self._stopped.is_set():
                t0, writes = time.monotonic(), self._writes
                index = None
                for page in store.pages("", list(_FIELDS), size=BUILD_PAGE):
                    if self._stopped.is_set():
                        return
                    index = index or LocalIndex(len(page[0][R.VECTOR]), [r[R.VECTOR] for r in page])
                    index.add(page)
                with self._lock:  # a write after this sees the index; one before, a changed count
                    if writes == self._writes:
                        if index is not None and not self._stopped.is_set():
                            self._index = index
                            log.info("%s: searching a local copy of its %d rows through HNSW (built in %.1f s)",
                                     store.collection, len(index), time.monotonic() - t0)
                        return
                # rows changed under the read: read them again
        except Exception:  # noqa: BLE001 - milvus-lite keeps answering; the index is an accelerator
            if not self._stopped.is_set():
                log.exception("%s: the local index could not be built; searching through milvus-lite", store.collection)

    def _current(self) -> Optional[LocalIndex]:
        """Count a write, and return the index it must reach (None: a build will read it)."""
        with self._lock:
            self._writes += 1
            return self._index

    def written(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rows the store just wrote (every field, as stored)."""
        if self.active and (index := self._current()) is not None:
            index.add(rows)

    def forget(self, ids) -> None:
        """Rows the store just deleted."""
        if self.active and (index := self._current()) is not None:
            index.forget(ids)

    def search(self, vectors, k: int, filter: str, output_fields) -> list[list[dict]]:
        """The store's search answered from the local copy: ``k`` rows that pass the filter,
        by exact cosine among the HNSW's proposals; a query whose proposals run out first is
        searched by milvus-lite itself, as is every query under a filter with no Python test."""
        index = self._index
        if index is None or (filter and not isinstance(filter, Filter)):
            return self.store._milvus_search(vectors, k, filter, output_fields)
        found = index.search(np.asarray(vectors, np.float32), k, filter.matches if filter else None)
        results = [None if hits is None else
                   [{R.ID: row[R.ID], "score": score,
                     **{f: (vector if f == R.VECTOR else row.get(f)) for f in output_fields if f != R.ID}}
                    for row, vector, score in hits]
                   for hits in found]
        short = [q for q, hits in enumerate(results) if hits is None]
        if short:  # the filter left too few: ask milvus-lite
            again = self.store._milvus_search([vectors[q] for q in short], k, filter, output_fields)
            for q, hits in zip(short, again):
                results[q] = hits
        return results
