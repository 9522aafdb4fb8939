"""Index planning: choose the smallest PQ code that keeps recall, measured as Milvus holds it.

The vectors Milvus indexes are the stored ones (ciphertexts when encryption is on), and a
query reaches the index encrypted; the store then decrypts ``rerank_factor × k``
candidates and re-ranks them exactly. The plan measures exactly that path with faiss
(IVF-PQ, and OPQ for comparison), for image→image and text→image queries separately
(quantisation has been seen to hurt text→image far more), against exact plaintext search.

Two things a single faiss index over a small sample gets wrong, both measured at 1M on the
server (docs/capacity.md): recall falls as rows get denser (so the plan measures on many
more rows than it trains on), and Milvus builds one IVF_PQ per sealed segment and merges
their candidates (so the plan measures segment by segment, :class:`SegmentedIndex`). The
re-rank factor is planned too: at m=64 a larger re-rank repairs what PQ loses.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from pixlake.platform.errors import ConfigError

MS = (8, 16, 32, 64, 128)
NPROBES = (8, 16, 32, 64, 128)
RERANK_FACTORS = (5, 10, 20, 40)  # a re-rank of 400 candidates repaired m=64 to 1.000 in the 1M simulation
SEGMENT_MB = 512  # Milvus 2.3's dataCoord.segment.maxSize default
# Milvus seals a segment by its *estimate* of a row, not the bytes written: a full 512 MB
# segment held 150k pixlake rows of 512-d (bench/segment_rows.py), ~3,540 estimated bytes a
# row of which the vector is 2,048 (and 255k rows of a bare id + vector collection).
ROW_OVERHEAD_BYTES = 1_488
PLAN_VERSION = 2


def choose_nlist(n: int) -> int:
    """IVF lists for ``n`` vectors: ~4·√n (Milvus and faiss guidance) rounded down to a power of two in [16, 65536],
    and at most n/39 so that every list gets enough training points (faiss warns below 39)."""
    target = min(4 * math.sqrt(max(n, 1)), max(16, n / 39))
    return int(min(65536, max(16, 2 ** math.floor(math.log2(max(target, 1))))))


@dataclass
class Candidate:
    """One measured code size."""

    m: int
    nprobe: int
    rerank_factor: int
    bytes_per_vector: int
    recall: dict  # {"image_to_image": {"pq": r, "reranked": r}, "text_to_image": {...}} at rerank_factor
    recall_by_factor: dict = field(default_factory=dict)  # {"image_to_image": {"5": r, "10": r, ...}, ...} at nprobe
    opq_recall: dict = field(default_factory=dict)  # the same with an OPQ rotation (faiss only)


@dataclass
class IndexPlan:
    """A saved plan (JSON) the store applies when it builds a server collection's index."""

    index_type: str
    params: dict
    search_params: dict
    rerank_factor: int
    recall: dict
    bytes_per_vector: int
    dim: int
    rows_sampled: int
    target: float
    k: int
    met: bool
    candidates: list[dict]
    corpus_rows: Optional[int] = None  # the collection's rows when planned (recall falls as it grows)
    segment_rows: Optional[int] = None  # rows per sealed segment the measurement modelled
    segments: Optional[int] = None  # segments the measured rows filled
    version: int = PLAN_VERSION

    def to_dict(self) -> dict:
        """The plan as saved."""
        return asdict(self)

    def save(self, path: Path) -> None:
        """Write the plan as JSON."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "IndexPlan":
        """Read a saved plan.

        Raises:
            ConfigError: missing or malformed.
        """
        try:
            data = json.loads(Path(path).read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"index plan {path}: {e}") from e


def _exact_topk(queries: np.ndarray, base: np.ndarray, k: int, exclude: Optional[np.ndarray],
                chunk: int = 100_000) -> np.ndarray:
    """Exact top-k ids by inner product, best first, over ``base`` in chunks (memory bounded
    by queries × chunk, so a sample of millions of rows can be measured)."""
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
    return best_i


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth)]))


def _normalise(x: np.ndarray) -> np.ndarray:
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

    base = _normalise(stored)
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

    base = _normalise(stored)
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
        index.train(base if train is None else _normalise(train))
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
                index.add(_normalise(rows))
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
        ids = index.search(_normalise(sent), k * max(factors) + (1 if own is not None else 0), nprobe)
        if own is not None:
            ids = np.where(ids == own[:, None], -1, ids)
        ids = [row[row >= 0] for row in ids]
        reranked = {}
        for f in factors:
            top = [row[:k * f] for row in ids]
            found = [row[np.argsort(-(plain[row] @ q), kind="stable")][:k] for q, row in zip(truth_q, top)]
            reranked[f] = round(_recall(_pad(found, k), truth), 4)
        out[name] = {"pq": round(_recall(_pad([row[:k] for row in ids], k), truth), 4), "reranked": reranked}
    return out


def _pad(rows: list, k: int) -> np.ndarray:
    return np.array([np.pad(np.asarray(r, np.int64), (0, k - len(r)), constant_values=-1) for r in rows])


def _at(measured: dict, factor: int) -> dict:
    """A measurement's recall at one re-rank factor: name -> {"pq", "reranked"}."""
    return {name: {"pq": r["pq"], "reranked": r["reranked"][factor]} for name, r in measured.items()}


def rerank_factors(minimum: int, maximum: int = RERANK_FACTORS[-1]) -> tuple[int, ...]:
    """The re-rank factors a plan tries: the configured one, then the larger of :data:`RERANK_FACTORS`."""
    return tuple(sorted({minimum} | {f for f in RERANK_FACTORS if minimum < f <= maximum}))


def plan_index(
    stored: np.ndarray, plain: np.ndarray, image_queries: np.ndarray, text_queries: np.ndarray,
    encrypt_query: Callable[[np.ndarray], np.ndarray], *, target: float = 0.95, k: int = 10,
    rerank_factor: int = 5, max_rerank_factor: int = RERANK_FACTORS[-1], ms: Sequence[int] = MS,
    nprobes: Sequence[int] = NPROBES, corpus_rows: Optional[int] = None, segment_rows: Optional[int] = None,
    opq: bool = True, train_rows: Optional[int] = None,
) -> IndexPlan:
    """Measure every PQ size as a Milvus server would hold it, and pick the smallest whose
    recall@k after re-rank meets ``target`` for both query types.

    For a code size, the cheapest query path that meets the target wins: the smallest
    re-rank factor (each candidate is a full vector read back from Milvus and decrypted),
    then the smallest nprobe at that factor (a scan of m-byte codes).

    Args:
        stored: sampled rows as stored, in insertion order; plain: the same rows decrypted (unit norm).
        image_queries: indexes into the sample used as image queries (their own row excluded).
        text_queries: plaintext text embeddings.
        encrypt_query: how a plaintext query reaches the index (identity without encryption).
        rerank_factor, max_rerank_factor: the re-rank factors tried, from the configured one up
            (see :func:`rerank_factors`).
        corpus_rows: the collection's size, default the sample size.
        segment_rows: rows per sealed Milvus segment (default :func:`segment_rows_for` the
            dimension, for pixlake's schema); the rows are measured split into segments of this size, each its own
            index, and nlist is chosen from the rows one segment holds (IVF is per segment).
        train_rows: each segment trains on its first ``train_rows`` rows only (pass the rows in
            random order) and is measured on all of them. Recall falls as rows get denser (at the
            same code size the true top-k are closer together), so a 20k sample overstates recall on a 1M corpus;
            measuring on many rows while training on a few keeps the plan honest and affordable.

    Raises:
        ConfigError: too few rows to train a PQ index.
    """
    n, d = stored.shape
    if n < 256:
        raise ConfigError(f"index planning needs at least 256 rows to train PQ codebooks; the sample has {n}")
    segment_rows = segment_rows or segment_rows_for(d)
    segments = segment_bounds(n, segment_rows)
    largest = max(b - a for a, b in segments)
    nlist = choose_nlist(min(corpus_rows or n, segment_rows))  # IVF is per segment
    nlist = min(nlist, choose_nlist(min(train_rows or largest, largest)))  # the sample must train the lists it plans
    factors = rerank_factors(rerank_factor, max(rerank_factor, max_rerank_factor))
    sets = {
        "image_to_image": (encrypt_query(plain[image_queries]), plain[image_queries], np.asarray(image_queries)),
        "text_to_image": (encrypt_query(_normalise(text_queries)), _normalise(text_queries), None),
    }
    truths = {name: _exact_topk(truth_q, plain, k, own) for name, (_, truth_q, own) in sets.items()}
    meets = lambda recall: all(r["reranked"] >= target for r in recall.values())  # noqa: E731
    candidates: list[Candidate] = []
    chosen: Optional[Candidate] = None
    quantizers = SegmentedIndex.train_quantizers(stored, nlist, segments, train_rows)
    for m in (m for m in ms if d % m == 0 and m <= d):
        index = SegmentedIndex(stored, m, nlist, segments, quantizers, train_rows)
        measured = {p: measure(index, plain, sets, p, k, factors, truths) for p in nprobes if p <= nlist}
        # The cheapest (factor, nprobe) that meets the target, else the most thorough measured.
        options = [(f, p) for f in factors for p in measured]
        f, p = next(((f, p) for f, p in options if meets(_at(measured[p], f))), options[-1])
        best = Candidate(m=m, nprobe=p, rerank_factor=f, bytes_per_vector=m, recall=_at(measured[p], f),
                         recall_by_factor={name: {str(x): r["reranked"][x] for x in factors}
                                           for name, r in measured[p].items()})
        if opq:
            rotated = SegmentedIndex(stored, m, nlist, segments, None, train_rows, opq=True)
            best.opq_recall = _at(measure(rotated, plain, sets, p, k, (f,), truths), f)
        candidates.append(best)
        if chosen is None and meets(best.recall):
            chosen = best
    met = chosen is not None
    chosen = chosen or candidates[-1]  # nothing met the target: the largest code, and the plan says so
    return IndexPlan(
        index_type="IVF_PQ", params={"nlist": nlist, "m": chosen.m, "nbits": 8}, search_params={"nprobe": chosen.nprobe},
        rerank_factor=chosen.rerank_factor, recall=chosen.recall, bytes_per_vector=chosen.bytes_per_vector, dim=d,
        rows_sampled=n, target=target, k=k, met=met, candidates=[asdict(c) for c in candidates],
        corpus_rows=corpus_rows or n, segment_rows=segment_rows, segments=len(segments),
    )


def plan_summary(plan: IndexPlan, path: Path) -> str:
    """A readable table of the measured code sizes and the choice."""
    lines = [f"index plan measured on {plan.rows_sampled} {plan.dim}-d rows of {plan.corpus_rows} as {plan.segments} "
             f"Milvus segment(s) of <= {plan.segment_rows} rows (nlist {plan.params['nlist']} per segment, "
             f"target recall@{plan.k} >= {plan.target} after re-rank)",
             "|  m | bytes/vector | nprobe | re-rank | image->image PQ | re-ranked | text->image PQ | re-ranked | "
             "re-ranked image / text at each factor |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c in plan.candidates:
        i, t = c["recall"]["image_to_image"], c["recall"]["text_to_image"]
        by = c["recall_by_factor"]
        curve = ", ".join(f"x{f}: {by['image_to_image'][f]:.3f}/{by['text_to_image'][f]:.3f}" for f in by["image_to_image"])
        lines.append(f"| {c['m']} | {c['bytes_per_vector']} | {c['nprobe']} | x{c['rerank_factor']} | {i['pq']:.3f} | "
                     f"{i['reranked']:.3f} | {t['pq']:.3f} | {t['reranked']:.3f} | {curve} |")
    verdict = "meets the target" if plan.met else "MISSES the target (largest code kept)"
    lines.append(f"chosen: IVF_PQ m={plan.params['m']} nprobe={plan.search_params['nprobe']} re-rank x{plan.rerank_factor}, "
                 f"{plan.bytes_per_vector} bytes/vector vs {4 * plan.dim} float32 "
                 f"({4 * plan.dim / plan.bytes_per_vector:.0f}x smaller); {verdict}")
    if plan.corpus_rows and plan.rows_sampled < plan.corpus_rows:
        lines.append(f"note: measured on {plan.rows_sampled} of {plan.corpus_rows} rows; recall falls as rows get denser, "
                     "so raise --measure-rows or plan again as the collection grows")
    lines.append(f"saved to {path}")
    return "\n".join(lines)


def plan_from_collection(settings, tenant: str, *, sample: int = 20_000, measure_rows: int = 200_000,
                         queries: int = 500, texts: Optional[Sequence[str]] = None, text_field: str = "caption",
                         target: float = 0.95, k: int = 10, opq: bool = False, segment_rows: Optional[int] = None,
                         max_rerank_factor: int = RERANK_FACTORS[-1]) -> IndexPlan:
    """Plan the index of the configured collection: train on ``sample`` rows, measure on up
    to ``measure_rows`` (recall falls as rows get denser, so a plan measured only on its
    training sample overstates what the index delivers on the whole collection).

    The stored vectors (ciphertexts when encrypted) train the index exactly as Milvus would
    see them; their decrypted vectors are the truth and the re-rank.

    Raises:
        ConfigError: no text queries (neither ``texts`` nor values of ``text_field``), or too few rows.
        StoreError: the collection is missing or holds another encoder's embeddings.
    """
    from pixlake.platform import records as R
    from pixlake.platform.encoder import load_encoder
    from pixlake.platform.query import open_collection
    from pixlake.platform.store import build_filter

    encoder = load_encoder(settings.encoder.model, settings.encoder.pretrained, settings.encoder.device)
    collection = open_collection(settings, encoder.fingerprint)
    try:
        stored, plain, meta = [], [], []
        fields = (R.ID, R.SUBJECT, R.SOURCE, R.META, R.NONCE, R.KEY_ID, R.VECTOR)
        for page in collection.store.pages(build_filter(tenant), fields):
            revealed = {r[R.ID]: r for r in collection.governance.reveal(tenant, page)}
            for row in page:
                if row[R.ID] in revealed:
                    # float32 arrays, not the client's float lists (8x the memory at a million rows)
                    stored.append(np.asarray(row[R.VECTOR], np.float32))
                    plain.append(np.asarray(revealed[row[R.ID]][R.VECTOR], np.float32))
                    meta.append(revealed[row[R.ID]][R.META])
            if len(stored) >= max(sample, measure_rows):
                break
        total = collection.store.count(build_filter(tenant))
        if texts is None:
            texts = sorted({str(m[text_field]) for m in meta if m.get(text_field) not in (None, "")})
        if not texts:
            raise ConfigError(f"no text queries: no row has metadata field {text_field!r}; pass --text-file")
        rng = np.random.default_rng(0)
        texts = [texts[i] for i in rng.permutation(len(texts))[:queries]]
        text_vectors = encoder.embed_texts(texts)
        rows = max(sample, measure_rows)
        stored_a, plain_a = np.asarray(stored[:rows], np.float32), _normalise(np.asarray(plain[:rows]))
        image_queries = rng.permutation(len(stored_a))[:queries]
        gov = collection.governance

        def encrypt(q: np.ndarray) -> np.ndarray:
            return np.stack([gov.encrypt_query(tenant, v) for v in q])

        return plan_index(stored_a, plain_a, image_queries, text_vectors, encrypt, target=target, k=k,
                          rerank_factor=settings.governance.rerank_factor, max_rerank_factor=max_rerank_factor,
                          corpus_rows=total, segment_rows=segment_rows, opq=opq,
                          train_rows=sample)
    finally:
        collection.close()
