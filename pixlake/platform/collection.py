"""A collection opened with its governance: the store of the rows and the governance that
protects them, opened together and closed together (:func:`open_collection`).

This module sits above both :mod:`pixlake.platform.store` and
:mod:`pixlake.platform.governance` (which never imports the store). Queries, re-indexing,
erasure and the Serve searcher open collections through it.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional

import numpy as np

from pixlake.platform import records as R
from pixlake.platform.errors import StoreError
from pixlake.platform.governance.service import Governance, governance_dir
from pixlake.platform.settings import LITE, Settings, backend_of
from pixlake.platform.store import MAX_TOPK, MilvusStore, build_filter, literal


# Past this many rows a Milvus server is the better store for a collection on milvus-lite
# (docs/capacity.md §4b, bench/lite_growth.py): searches stay fast through the Searcher's
# local copy, but every `pixlake serve` start builds that copy before searches use it, and
# it holds the rows a second time in memory. Read at call time: tests lower it.
LITE_CROSSOVER_ROWS = 200_000
# A collapsing search fetches this many times the candidates: a hit's copies score close to
# it, so without more candidates they would take the places of the next distinct hits.
COLLAPSE_WIDEN = 4


def crossover_hint(settings: Settings, rows: int) -> Optional[str]:
    """One line naming how to move a milvus-lite collection of ``rows`` rows past
    :data:`LITE_CROSSOVER_ROWS` to a Milvus server; None on a server or below it."""
    if backend_of(settings.store.db) != LITE or rows < LITE_CROSSOVER_ROWS:
        return None
    return (f"pixlake: hint: {settings.store.collection} holds {rows:,} rows on milvus-lite; past "
            f"{LITE_CROSSOVER_ROWS:,} a Milvus server serves it better: re-embed the same sources with "
            f"--db http://HOST:19530 and governance.key_dir={governance_dir(settings)} "
            f"(docs/capacity.md, 'Moving to a Milvus server')")


def check_fingerprint(store: MilvusStore, fingerprint: str) -> None:
    """Refuse to query a collection embedded by another encoder (its vectors mean something else).

    Raises:
        StoreError: the collection holds another encoder's embeddings.
    """
    stored = store.model()
    if stored is not None and stored != fingerprint:
        raise StoreError(
            f"collection {store.collection} holds embeddings of {stored}; the query encoder is "
            f"{fingerprint}. Use the same --model/--pretrained as the embed job"
        )


class QueryCollection:
    """A collection opened with its governance: the store, and the governance that decrypts
    it; a context manager that closes both.

    With encryption on, a query is encrypted with the tenant key, Milvus returns
    ``rerank_factor × k`` ciphertext candidates, and they are decrypted here (the trusted
    service) and re-ranked by exact similarity to the plaintext query. While a key rotation
    leaves rows under two versions, each version's rows are searched with a query under it.
    """

    def __init__(self, store: MilvusStore, governance: Governance):
        self.store = store
        self.governance = governance

    def __enter__(self) -> "QueryCollection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def rerank_factor(self) -> int:
        """Candidates fetched per hit: the configured factor, or the index plan's when larger
        (the plan measured the re-rank its PQ code needs to keep recall)."""
        return max(self.governance.settings.rerank_factor, self.store.index.rerank_factor or 0)

    def search(self, vector: np.ndarray, k: int = 10, tenant: str = "default",
               meta: Optional[Mapping[str, Any]] = None, *, min_score: Optional[float] = None,
               collapse: bool = False, exclude: Optional[str] = None) -> list[dict]:
        """Search one tenant's rows.

        Args:
            vector: normalised plaintext query vector.
            k: number of hits at most.
            tenant: the tenant searched (queries never cross tenants).
            meta: structured metadata filter (see :func:`~pixlake.platform.store.filters.build_filter`).
            min_score: hits scoring below it are dropped (fewer than ``k`` may come back).
            collapse: at most one hit per group of near-duplicates (cosine at least
                :data:`~pixlake.platform.dedup.DEFAULT_THRESHOLD` to each other), the best;
                each hit then says in ``copies`` how many candidates it stands for. More
                candidates are fetched (:data:`COLLAPSE_WIDEN`), so copies rarely cost a slot.
            exclude: a row id never returned (a "more like this" item itself).

        Returns:
            Hits ``{"id", "source", "score", "meta"}`` (and ``"copies"`` when collapsing), best first.
        """
        from pixlake.platform import dedup

        vector = np.asarray(vector, np.float32)
        wanted = k * self.rerank_factor * (COLLAPSE_WIDEN if collapse else 1) + (exclude is not None)
        rows = [r for r in self._candidates(vector, min(wanted, MAX_TOPK), tenant, meta)
                if r[R.ID] != exclude and (min_score is None or r["score"] >= min_score)]
        if collapse and rows:
            kept = dedup.collapse(np.asarray([r[R.VECTOR] for r in rows], np.float32), k)
            return [{**self._hit(rows[n]), "copies": copies} for n, copies in kept]
        return [self._hit(r) for r in rows[:k]]

    def similar(self, tenant: str, item_id: str, k: int = 10, meta: Optional[Mapping[str, Any]] = None, *,
                min_score: Optional[float] = None, collapse: bool = False) -> Optional[list[dict]]:
        """"More like this": :meth:`search` with a stored item's own exact vector, the item
        itself left out. None when the tenant has no such item or its subject is being erased
        (the caller answers as for an unknown id: another tenant's item is never hinted at)."""
        row = self.item(tenant, item_id)
        if row is None:
            return None
        return self.search(np.asarray(row[R.VECTOR], np.float32), k, tenant, meta, min_score=min_score,
                           collapse=collapse, exclude=item_id)

    @staticmethod
    def _hit(row: dict) -> dict:
        return {"id": row[R.ID], "source": row[R.SOURCE], "score": round(row["score"], 6), "meta": row[R.META]}

    def _candidates(self, vector: np.ndarray, n: int, tenant: str, meta: Optional[Mapping[str, Any]]) -> list[dict]:
        return self.candidates(vector[None, :], n, tenant, meta)[0]

    def candidates(self, vectors: np.ndarray, n: int, tenant: str,
                   meta: Optional[Mapping[str, Any]] = None) -> list[list[dict]]:
        """For each query vector, up to ``n`` decrypted rows nearest to it with their exact
        ``score``, best first (one store search for all the queries). Rows of a subject
        being erased are left out."""
        expr = build_filter(tenant, meta)
        gov = self.governance
        fields = (R.ID, R.SOURCE, R.META, R.SUBJECT, R.NONCE, R.KEY_ID, R.VECTOR)
        versions = gov.live_versions(tenant) if gov.encryption else []
        if len(versions) > 1:
            # A rotation is under way: rows under each version are compared with a query
            # encrypted under that version (another key's query scores them at random).
            searches = [([gov.encrypt_query(tenant, v, version) for v in vectors], f'{expr} and {R.NONCE} like "{version}:%"')
                        for version in versions]
        else:
            searches = [([gov.encrypt_query(tenant, v) for v in vectors], expr)]
        per_query: list[list[dict]] = [[] for _ in vectors]
        for queries, where in searches:
            for q, hits in enumerate(self.store.search(queries, k=n, filter=where, output_fields=fields)):
                per_query[q] += hits
        unique = {hit[R.ID]: hit for hits in per_query for hit in hits}  # a row near many queries is opened once
        revealed = {r[R.ID]: r for r in gov.reveal(tenant, list(unique.values()))}
        out = []
        for vector, hits in zip(vectors, per_query):
            rows = [revealed[i] for i in dict.fromkeys(h[R.ID] for h in hits) if i in revealed]  # ids once, in order
            scores = np.asarray([r[R.VECTOR] for r in rows], np.float32).reshape(len(rows), -1) @ vector if rows else []
            # exact cosine (both are unit vectors), best first
            out.append(sorted(({**r, "score": float(sc)} for r, sc in zip(rows, scores)), key=lambda r: -r["score"]))
        return out

    def read(self, tenant: str, meta: Optional[Mapping[str, Any]] = None, subject: Optional[str] = None) -> list[dict]:
        """Every row of a tenant (optionally one subject pseudonym, or a metadata filter),
        decrypted: exact ``vector``, opened ``source`` and ``meta``. Export, re-keying and
        re-indexing read the Milvus rows through this: there is no second copy."""
        return [row for page in self.read_pages(tenant, meta, subject) for row in page]

    def read_pages(self, tenant: str, meta: Optional[Mapping[str, Any]] = None, subject: Optional[str] = None,
                   size: int = 1000) -> Iterator[list[dict]]:
        """:meth:`read` a page of ``size`` stored rows at a time (bounded memory over any
        collection; a page comes back shorter by the rows of subjects being erased)."""
        expr = build_filter(tenant, meta, subject)
        fields = (R.ID, R.TENANT, R.SUBJECT, R.CONTENT_HASH, R.SOURCE, R.MODEL, R.META, R.NONCE, R.KEY_ID, R.VECTOR)
        for page in self.store.pages(expr, fields, size):
            yield self.governance.reveal(tenant, page)

    def item(self, tenant: str, item_id: str) -> Optional[dict]:
        """One row of a tenant by id, decrypted (``source`` opened), or None when the tenant
        has no such row or its subject is being erased (what a thumbnail may show)."""
        if not R.is_row_id(item_id):
            return None  # no row has such an id; never let it near an expression
        expr = f"{build_filter(tenant)} and {R.ID} == {literal(item_id)}"
        fields = (R.ID, R.SUBJECT, R.CONTENT_HASH, R.SOURCE, R.META, R.NONCE, R.KEY_ID, R.VECTOR)
        rows = self.governance.reveal(tenant, self.store.query(expr, fields))
        return rows[0] if rows else None

    def describe(self) -> dict:
        """The store's description plus how the rows are protected."""
        return {**self.store.describe(), "encryption": self.governance.encryption}

    def close(self) -> None:
        """Close the store and the key store."""
        try:
            self.store.close()
        finally:
            self.governance.close()


def open_collection(settings: Settings, fingerprint: Optional[str] = None) -> QueryCollection:
    """Open the configured collection with its governance; close it when done (``with
    open_collection(...) as collection:``). Whatever fails while opening closes what was
    already open.

    Args:
        fingerprint: the encoder that will query it: the collection must then exist and
            hold that encoder's embeddings. None opens it as it is (it may not exist yet).

    Raises:
        StoreError: with a fingerprint, the collection does not exist or holds another
            encoder's embeddings; or the store cannot be opened.
        ConfigError, GovernanceError: no key source for an encrypted store.
    """
    governance = Governance.open(settings)
    try:
        opened = QueryCollection(MilvusStore.configured(settings.store), governance)
    except BaseException:
        governance.close()
        raise
    if fingerprint is None:
        return opened
    try:
        if not opened.store.exists():
            raise StoreError(f"no collection {settings.store.collection} in {settings.store.db}; run `pixlake embed` first")
        check_fingerprint(opened.store, fingerprint)
    except BaseException:
        opened.close()
        raise
    return opened
