"""Milvus's IVF_PQ as a server holds it, modelled in faiss, and recall measured on it.

A server builds one IVF_PQ per sealed segment, each trained on its own rows, and merges the
segments' top candidates (:class:`SegmentedIndex`); the store then re-ranks ``f × k``
candidates exactly (:func:`measure`). :mod:`pixlake.platform.index_plan` plans an index
with these, and the benchmarks (``bench/scale.py``, ``bench/segment_rerank.py``) measure with
them, so a plan and a benchmark can never model the index differently.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Optional, Sequence

import numpy as np

SEGMENT_MB = 512  # Milvus 2.3's dataCoord.segment.maxSize default
# Milvus seals a segment by its *estimate* of a row, not the bytes written: a full 512 MB
# segment held 150k pixlake rows of 512-d (bench/segment_rows.py), ~3,540 estimated bytes a
# row of which the vector is 2,048 (and 255k rows of a bare id + vector collection).
ROW_OVERHEAD_BYTES = 1_488


def choose_nlist(n: int) -> int:
    """IVF lists for ``n`` vectors: ~4·√n (Milvus and faiss guidance) rounded down to a power of two in [16, 65536],
    and at most n/39 so that every list gets enough training points (faiss warns below 39)."""
    target = min(4 * math.sqrt(max(n, 1)), max(16, n / 39))
    return int(min(65536, max(16, 2 ** math.floor(math.log2(max(target, 1))))))


def exact_topk(queries: np.ndarray, base: np.ndarray, k: int, exclude: Optional[np.ndarray] = None,
               chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product, best first, over ``base`` in chunks (memory bounded by
    queries × chunk, so a sample of millions of rows can be measured).

    Args:
        exclude: per query, the index of a row it must not find (its own), or None.

    Returns:
        ``(ids, scores)``, each queries × k.
    """
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(base), chunk):
        scores = queries @ base[start:start + chunk].T
        if exclude is not None:
            own = (exclude >= start) & (exclude < start + scores.shape[1])
            scores[np.nonzero(own)[0], exclude[own] - start] = -np.inf
        kk = min(k, scores.shape[1])
        idx = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < scores.shape[1] else \
            np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, idx, 1)], 1)
        cand_i = np.concatenate([best_i, idx + start], 1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i, best_s


def recall(found: Sequence[Sequence[int]], truth: np.ndarray) -> float:
    """Mean share of each query's true ids (a row of ``truth``) among its found ids (-1 pads)."""
    shares = []
    for f, t in zip(found, truth):
        f = np.asarray(f)
        shares.append(len(set(f[f >= 0].tolist()) & set(np.asarray(t).tolist())) / len(t))
    return float(np.mean(shares))


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm, as float32 (a zero row stays zero)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@contextmanager
def _quiet_stderr():
    """faiss's k-means warns on stderr (from C++) when a sample is small; the plan reports
    the sample size itself, so keep the job's output readable."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def train_quantizer(stored: np.ndarray, nlist: int):
    """The IVF coarse quantizer (spherical k-means), trained once and shared by every code size."""
    import faiss

    base = normalise(stored)
    kmeans = faiss.Kmeans(base.shape[1], nlist, niter=20, spherical=True, seed=0)
    with _quiet_stderr():
        kmeans.train(base)
    quantizer = faiss.IndexFlatIP(base.shape[1])
    quantizer.add(kmeans.centroids)
    return quantizer


def build_index(stored: np.ndarray, m: int, nlist: int, opq: bool = False, quantizer=None,
                train: Optional[np.ndarray] = None):
    """Train and fill a faiss IVF-PQ index (8-bit codes, inner product on normalised vectors,
    which is Milvus's COSINE); with ``opq``, an OPQ rotation first (Milvus's IVF_PQ has none).
    A trained ``quantizer`` (see :func:`train_quantizer`) is reused rather than retrained;
    ``train`` (default ``stored``) are the rows the codebooks are trained on."""
    import faiss

    base = normalise(stored)
    d = base.shape[1]
    if quantizer is not None and not opq:
        index = faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        ivf = index
    else:
        index = faiss.index_factory(d, f"{'OPQ%d,' % m if opq else ''}IVF{nlist},PQ{m}x8", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    # The factory turns on polysemous training (a Hamming-distance reordering, thousands of
    # extra k-means runs); Milvus's IVF_PQ has no such thing, so it would measure another index.
    ivf.do_polysemous_training = False
    with _quiet_stderr():
        index.train(base if train is None else normalise(train))
    index.add(base)
    return index


class SegmentedIndex:
    """IVF-PQ as a Milvus server holds it: one index per sealed segment, each trained on its own
    rows, whose top candidates are merged by their PQ scores. Measured at 1M on the server,
    this loses recall against one index over all rows (0.60 against 0.79 at m=64, 4 segments),
    so a plan that models a single index overstates what Milvus delivers.

    Args:
        stored: rows as Milvus holds them, in insertion order.
        m, nlist: PQ sub-quantisers and IVF lists (per segment, as Milvus applies them; a
            segment too small to train ``nlist`` lists gets as many as it can).
        segments: ``(start, end)`` row ranges, one per segment (:func:`segment_bounds`).
        quantizers: from :meth:`train_quantizers` (shared across code sizes), or None to train here.
        train_rows: each segment trains on its first ``train_rows`` rows (default all).
        opq: an OPQ rotation first (faiss only, for comparison).

    A segment under :attr:`MIN_INDEXED_ROWS` is searched exactly, as Milvus does, unless every
    segment is that small: a plan on a small collection still measures the PQ index it is for.
    """

    MIN_INDEXED_ROWS = 1024  # Milvus builds no index for a smaller segment; it is searched exactly

    def __init__(self, stored: np.ndarray, m: int, nlist: int, segments: Sequence[tuple[int, int]],
                 quantizers: Optional[Sequence] = None, train_rows: Optional[int] = None, opq: bool = False):
        import faiss

        if quantizers is None and not opq:
            quantizers = self.train_quantizers(stored, nlist, segments, train_rows)
        self.parts = []
        for i, (a, b) in enumerate(segments):
            rows = stored[a:b]
            if self.exact(segments, i):
                index = faiss.IndexFlatIP(rows.shape[1])
                index.add(normalise(rows))
            else:
                lists = self.lists(nlist, len(rows[:train_rows] if train_rows else rows))
                index = build_index(rows, m, lists, opq=opq, quantizer=None if opq else quantizers[i],
                                    train=rows[:train_rows] if train_rows else None)
            self.parts.append((a, index))

    @classmethod
    def exact(cls, segments: Sequence[tuple[int, int]], i: int) -> bool:
        """Whether segment ``i`` is searched without an index (see the class docstring)."""
        small = [b - a < cls.MIN_INDEXED_ROWS for a, b in segments]
        return small[i] and not all(small)

    @staticmethod
    def lists(nlist: int, train_rows: int) -> int:
        """IVF lists a segment trained on ``train_rows`` rows gets: ``nlist``, or fewer when too few rows."""
        return min(nlist, choose_nlist(train_rows))

    @classmethod
    def train_quantizers(cls, stored: np.ndarray, nlist: int, segments: Sequence[tuple[int, int]],
                         train_rows: Optional[int] = None) -> list:
        """One coarse quantizer per segment (None where a segment is searched exactly)."""
        out = []
        for i, (a, b) in enumerate(segments):
            train = stored[a:b][:train_rows] if train_rows else stored[a:b]
            out.append(None if cls.exact(segments, i) else train_quantizer(train, cls.lists(nlist, len(train))))
        return out

    def search(self, queries: np.ndarray, topk: int, nprobe: int) -> np.ndarray:
        """Ids of the ``topk`` best rows by PQ score (-1 pads), merged across segments."""
        import faiss

        scores, ids = [], []
        for start, index in self.parts:
            if not isinstance(index, faiss.IndexFlat):  # an exact segment has no lists to probe
                ivf = faiss.extract_index_ivf(index)
                ivf.nprobe = min(nprobe, ivf.nlist)
            d, i = index.search(queries, topk)
            scores.append(np.where(i >= 0, d, -np.inf))
            ids.append(np.where(i >= 0, i + start, -1))
        order = np.argsort(-np.concatenate(scores, 1), axis=1, kind="stable")[:, :topk]
        return np.take_along_axis(np.concatenate(ids, 1), order, 1)


def segment_bounds(n: int, segment_rows: int) -> list[tuple[int, int]]:
    """Row ranges of the segments ``n`` rows fill in insertion order: full segments of
    ``segment_rows``, then the rest (a server seals a segment when it is full; the embedded
    server sealed 1M 512-d rows as 240k, 240k, 240k, 240k and 40k)."""
    step = max(1, segment_rows)
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def segment_rows_for(dim: int, segment_mb: int = SEGMENT_MB, row_overhead: int = ROW_OVERHEAD_BYTES) -> int:
    """Rows of a pixlake collection one sealed Milvus segment holds: ``dataCoord.segment.maxSize``
    (MB) over Milvus's estimate of a row, the ``dim``-d float32 vector plus ``row_overhead``
    (152k rows for 512-d at 512 MB; ``bench/segment_rows.py`` saw full segments of 150k)."""
    return segment_mb * 2**20 // (4 * dim + row_overhead)


def measure(index: SegmentedIndex, plain: np.ndarray, queries: dict[str, tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]],
            nprobe: int, k: int, factors: Sequence[int], truths: dict[str, np.ndarray]) -> dict:
    """Recall@k of ``index`` for each query set, from the PQ ranking alone and after the exact
    re-rank of ``f × k`` candidates for every ``f`` in ``factors`` (one search at the largest).

    Args:
        index: over the vectors as Milvus holds them (ciphertexts or plaintext).
        plain: the same rows in plaintext, unit norm (the re-rank).
        queries: name -> (query as sent to the index, plaintext query, index of the query's own row
            to exclude, or None).
        nprobe: lists probed per segment; k: hits.
        truths: name -> exact top-k ids.

    Returns:
        name -> ``{"pq": r, "reranked": {f: r}}``.
    """
    out = {}
    for name, (sent, truth_q, own) in queries.items():
        truth = truths[name]
        ids = index.search(normalise(sent), k * max(factors) + (1 if own is not None else 0), nprobe)
        if own is not None:
            ids = np.where(ids == own[:, None], -1, ids)
        ids = [row[row >= 0] for row in ids]
        reranked = {}
        for f in factors:
            top = [row[:k * f] for row in ids]
            found = [row[np.argsort(-(plain[row] @ q), kind="stable")][:k] for q, row in zip(truth_q, top)]
            reranked[f] = round(recall(_pad(found, k), truth), 4)
        out[name] = {"pq": round(recall(_pad([row[:k] for row in ids], k), truth), 4), "reranked": reranked}
    return out


def _pad(rows: list, k: int) -> np.ndarray:
    return np.array([np.pad(np.asarray(r, np.int64), (0, k - len(r)), constant_values=-1) for r in rows])
