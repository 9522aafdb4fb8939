"""Near-duplicate stage of the embed job (``--near-duplicates skip|link``), between embed and
protect: a new image whose nearest neighbour in its tenant is at or above the threshold is
not stored (``skip``: the row is skipped with the reason ``near_duplicate:<id>``) or is
stored with the matched id in its metadata (``link``: ``near_duplicate_of``).

The neighbour is looked for among the rows stored before (through the index, confirmed by
the exact cosine of the decrypted vectors, subjects being erased left out) and among the
rows this run let through earlier (an in-memory HNSW index of their exact vectors, and an
exact product within a batch). So two new near-copies are handled as a new image against a
stored one. That decision must see the run's rows in one order, so the stage is one actor:
it is in the job only when asked for, and costs a store search per row (batched).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from pixlake.platform.dedup import SCORE_SLACK, check_threshold, unit_rows
from pixlake.platform.pipeline.rows import OK, SKIPPED

KEEP, SKIP, LINK = "keep", "skip", "link"  # job.near_duplicates
NEAR_DUPLICATE = "near_duplicate"  # the reason's code: "near_duplicate:<matched id>"
LINK_KEY = "near_duplicate_of"  # the metadata key a linked row carries
HNSW_LINKS = 32  # neighbours per node of the run's in-memory index


def near_reason(matched: str) -> str:
    """The ``reason`` of a row found near ``matched`` (kept on a linked row too, so the write stage counts it)."""
    return f"{NEAR_DUPLICATE}:{matched}"


def matched_id(reason: Optional[str]) -> Optional[str]:
    """The id a row's reason says it is a near-duplicate of, or None."""
    code, _, rest = (reason or "").partition(":")
    return rest if code == NEAR_DUPLICATE and rest else None


class RunIndex:
    """One tenant's rows let through by this run: ids and exact unit vectors, searchable by
    inner product (faiss HNSW: no training, rows added as they come)."""

    def __init__(self, dim: int):
        import faiss

        self.ids: list[str] = []
        self.index = faiss.IndexHNSWFlat(dim, HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)

    def nearest(self, x: np.ndarray) -> list[Optional[tuple[str, float]]]:
        """Each row's nearest run row ``(id, cosine)``, or None while the index is empty."""
        if not self.ids:
            return [None] * len(x)
        scores, found = self.index.search(x, 1)
        return [(self.ids[j], float(s)) if j >= 0 else None for s, j in zip(scores[:, 0], found[:, 0])]

    def add(self, ids: list[str], x: np.ndarray) -> None:
        """Let rows through: later rows are compared with them."""
        if ids:
            self.ids += ids
            self.index.add(np.ascontiguousarray(x, np.float32))


class NearDuplicates:
    """Callable actor class (one actor): marks each new row that is a near-duplicate.

    Args:
        settings: the job's settings (its governance is opened here, to decrypt candidates).
        store: the job's store handle (searches go through it: on milvus-lite, the store actor).
        mode: ``skip`` or ``link``.
        threshold: cosine in (0, 1] at or above which a row is a near-duplicate.
        candidates: stored candidates fetched per row (the collection's re-rank factor).
    """

    def __init__(self, settings: Any, store: Any, mode: str, threshold: float, candidates: int):
        from pixlake.platform.collection import QueryCollection
        from pixlake.platform.governance.service import Governance

        if mode not in (SKIP, LINK):
            raise ValueError(f"near-duplicate mode must be {SKIP} or {LINK}, got {mode!r}")
        self.mode, self.threshold, self.candidates = mode, check_threshold(threshold), candidates
        self.stored = QueryCollection(store, Governance.open(settings))
        self.runs: dict[str, RunIndex] = {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        by_tenant: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            if r["status"] == OK:
                by_tenant[r["tenant"]].append(r)
        for tenant, group in by_tenant.items():
            self._decide(tenant, group)
        return pa.Table.from_pylist(rows, schema=batch.schema)

    def _decide(self, tenant: str, group: list[dict]) -> None:
        x = unit_rows(np.asarray([r["vector"] for r in group], np.float32))
        stored = [hits[0] if hits else None for hits in self.stored.candidates(x, self.candidates, tenant)]
        run = self.runs.setdefault(tenant, RunIndex(x.shape[1]))
        earlier = run.nearest(x)
        within = x @ x.T  # rows of this batch let through before each row
        through: list[int] = []
        for k, r in enumerate(group):
            options = [(stored[k]["id"], stored[k]["score"])] if stored[k] is not None else []
            options += [earlier[k]] if earlier[k] is not None else []
            if through:
                j = through[int(np.argmax(within[k, through]))]
                options.append((group[j]["id"], float(within[k, j])))
            match = max(options, key=lambda o: o[1], default=None)
            if match is not None and match[1] < self.threshold - SCORE_SLACK:
                match = None
            if match is None or self.mode == LINK:
                through.append(k)
            if match is None:
                continue
            r["reason"] = near_reason(match[0])
            if self.mode == SKIP:
                r["status"] = SKIPPED
            else:
                meta = json.loads(r["meta"] or "{}")
                meta[LINK_KEY] = match[0]
                r["meta"] = json.dumps(meta)
        run.add([group[k]["id"] for k in through], x[through])
