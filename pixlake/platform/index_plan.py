"""Index planning: choose the smallest PQ code that keeps recall, measured on the corpus.

The vectors Milvus indexes are the stored ones (ciphertexts when encryption is on), and a
query reaches the index encrypted; the store then decrypts ``rerank_factor × k``
candidates and re-ranks them exactly. The plan measures exactly that path with faiss
(IVF-PQ, and OPQ for comparison), for image→image and text→image queries separately
(quantisation has been seen to hurt text→image far more), against exact plaintext search.
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
PLAN_VERSION = 1


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
    bytes_per_vector: int
    recall: dict  # {"image_to_image": {"pq": r, "reranked": r}, "text_to_image": {...}}
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


def measure(index, plain: np.ndarray, queries: dict[str, tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]],
            nprobe: int, k: int, rerank_factor: int, truths: Optional[dict[str, np.ndarray]] = None) -> dict:
    """Recall@k of ``index`` for each query set, from the PQ ranking alone and after the exact re-rank.

    Args:
        index: from :func:`build_index` over the vectors as Milvus holds them (ciphertexts or plaintext).
        plain: the same rows in plaintext, unit norm (truth and re-rank).
        queries: name -> (query as sent to the index, plaintext query, index of the query's own row
            to exclude, or None).
        nprobe: lists probed; k, rerank_factor: hits, and candidates fetched per hit for the re-rank.
        truths: name -> exact top-k ids, when already computed (else computed here).
    """
    import faiss

    faiss.extract_index_ivf(index).nprobe = nprobe
    out = {}
    for name, (sent, truth_q, own) in queries.items():
        truth = truths[name] if truths is not None else _exact_topk(truth_q, plain, k, own)
        _, ids = index.search(_normalise(sent), k * rerank_factor + (1 if own is not None else 0))
        if own is not None:
            ids = np.where(ids == own[:, None], -1, ids)
        pq_only = [row[row >= 0][:k] for row in ids]
        reranked = [row[row >= 0][np.argsort(-(plain[row[row >= 0]] @ q))][:k] for q, row in zip(truth_q, ids)]
        out[name] = {"pq": round(_recall(_pad(pq_only, k), truth), 4), "reranked": round(_recall(_pad(reranked, k), truth), 4)}
    return out


def _pad(rows: list, k: int) -> np.ndarray:
    return np.array([np.pad(np.asarray(r, np.int64), (0, k - len(r)), constant_values=-1) for r in rows])


def plan_index(
    stored: np.ndarray, plain: np.ndarray, image_queries: np.ndarray, text_queries: np.ndarray,
    encrypt_query: Callable[[np.ndarray], np.ndarray], *, target: float = 0.95, k: int = 10,
    rerank_factor: int = 5, ms: Sequence[int] = MS, nprobes: Sequence[int] = NPROBES, corpus_rows: Optional[int] = None,
    opq: bool = True, train_rows: Optional[int] = None,
) -> IndexPlan:
    """Measure every PQ size and pick the smallest whose recall@k after re-rank meets ``target``
    for both query types (the smallest nprobe that does, for that size).

    Args:
        stored: sampled rows as stored; plain: the same rows decrypted (unit norm).
        image_queries: indexes into the sample used as image queries (their own row excluded).
        text_queries: plaintext text embeddings.
        encrypt_query: how a plaintext query reaches the index (identity without encryption).
        corpus_rows: the collection's size (nlist is chosen from it), default the sample size.
        train_rows: train the quantizer and codebooks on the first ``train_rows`` rows only (pass
            the rows in random order) and measure on all of them. Recall falls as rows get denser (at the same code size the
            true top-k are closer together), so a 20k sample overstates recall on a 1M corpus;
            measuring on many rows while training on a few keeps the plan honest and affordable.

    Raises:
        ConfigError: too few rows to train a PQ index.
    """
    n, d = stored.shape
    if n < 256:
        raise ConfigError(f"index planning needs at least 256 rows to train PQ codebooks; the sample has {n}")
    train = stored[:train_rows] if train_rows is not None and train_rows < n else stored
    nlist = choose_nlist(corpus_rows or n)
    nlist = min(nlist, choose_nlist(len(train)))  # the sample must be able to train the lists it plans
    sets = {
        "image_to_image": (encrypt_query(plain[image_queries]), plain[image_queries], np.asarray(image_queries)),
        "text_to_image": (encrypt_query(_normalise(text_queries)), _normalise(text_queries), None),
    }
    truths = {name: _exact_topk(truth_q, plain, k, own) for name, (_, truth_q, own) in sets.items()}
    candidates: list[Candidate] = []
    chosen: Optional[Candidate] = None
    quantizer = train_quantizer(train, nlist)
    for m in (m for m in ms if d % m == 0 and m <= d):
        index = build_index(stored, m, nlist, quantizer=quantizer, train=train)
        for nprobe in (p for p in nprobes if p <= nlist):
            best = Candidate(m=m, nprobe=nprobe, bytes_per_vector=m,
                             recall=measure(index, plain, sets, nprobe, k, rerank_factor, truths))
            if all(r["reranked"] >= target for r in best.recall.values()):
                break
        if opq:
            best.opq_recall = measure(build_index(stored, m, nlist, opq=True, train=train), plain, sets, best.nprobe, k,
                                      rerank_factor, truths)
        candidates.append(best)
        if chosen is None and all(r["reranked"] >= target for r in best.recall.values()):
            chosen = best
    met = chosen is not None
    chosen = chosen or candidates[-1]  # nothing met the target: the largest code, and the plan says so
    return IndexPlan(
        index_type="IVF_PQ", params={"nlist": nlist, "m": chosen.m, "nbits": 8}, search_params={"nprobe": chosen.nprobe},
        rerank_factor=rerank_factor, recall=chosen.recall, bytes_per_vector=chosen.bytes_per_vector, dim=d,
        rows_sampled=n, target=target, k=k, met=met, candidates=[asdict(c) for c in candidates],
    )


def plan_summary(plan: IndexPlan, path: Path) -> str:
    """A readable table of the measured code sizes and the choice."""
    lines = [f"index plan for {plan.rows_sampled} sampled {plan.dim}-d rows (nlist {plan.params['nlist']}, "
             f"re-rank x{plan.rerank_factor}, target recall@{plan.k} >= {plan.target} after re-rank)",
             "|  m | bytes/vector | nprobe | image->image PQ | re-ranked | text->image PQ | re-ranked |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for c in plan.candidates:
        i, t = c["recall"]["image_to_image"], c["recall"]["text_to_image"]
        lines.append(f"| {c['m']} | {c['bytes_per_vector']} | {c['nprobe']} | {i['pq']:.3f} | {i['reranked']:.3f} | "
                     f"{t['pq']:.3f} | {t['reranked']:.3f} |")
    verdict = "meets the target" if plan.met else "MISSES the target (largest code kept)"
    lines.append(f"chosen: IVF_PQ m={plan.params['m']} nprobe={plan.search_params['nprobe']}, {plan.bytes_per_vector} "
                 f"bytes/vector vs {4 * plan.dim} float32 ({4 * plan.dim / plan.bytes_per_vector:.0f}x smaller); {verdict}")
    lines.append(f"saved to {path}")
    return "\n".join(lines)


def plan_from_collection(settings, tenant: str, *, sample: int = 20_000, measure_rows: int = 200_000,
                         queries: int = 500, texts: Optional[Sequence[str]] = None, text_field: str = "caption",
                         target: float = 0.95, k: int = 10, opq: bool = False) -> IndexPlan:
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
                    stored.append(row[R.VECTOR])
                    plain.append(revealed[row[R.ID]][R.VECTOR])
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
                          rerank_factor=settings.governance.rerank_factor, corpus_rows=total, opq=opq,
                          train_rows=sample)
    finally:
        collection.close()
