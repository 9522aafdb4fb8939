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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from pixlake.platform.errors import ConfigError
# The faiss model of a server's index lives beside the plan; its names stay importable from here.
from pixlake.platform.segmented_index import (  # noqa: F401
    ROW_OVERHEAD_BYTES, SEGMENT_MB, SegmentedIndex, build_index, choose_nlist, exact_topk, measure, normalise,
    recall, segment_bounds, segment_rows_for, train_quantizer,
)

MS = (8, 16, 32, 64, 128)
NPROBES = (8, 16, 32, 64, 128)
RERANK_FACTORS = (5, 10, 20, 40)  # a re-rank of 400 candidates repaired m=64 to 0.999 in the 1M simulation (docs/benchmarks.md)
PLAN_VERSION = 2


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
        "text_to_image": (encrypt_query(normalise(text_queries)), normalise(text_queries), None),
    }
    truths = {name: exact_topk(truth_q, plain, k, own)[0] for name, (_, truth_q, own) in sets.items()}
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
        stored_a, plain_a = np.asarray(stored[:rows], np.float32), normalise(np.asarray(plain[:rows]))
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
