"""Near-duplicate groups among one tenant's rows, found from their exact (decrypted) vectors.

Exact-bytes duplicates never reach the store twice (the row id hashes the content), but a
re-compressed, resized, cropped or watermarked copy does. Two rows are near-duplicates
when the cosine of their exact vectors is at least a threshold (0.95 by default).

1. **Pairs** (:func:`near_pairs`): every pair of rows at or above the threshold. Up to
   :data:`EXACT_MAX_ROWS` rows, a blocked exact product finds all of them. Above that, a
   faiss IVF-Flat index over the unit vectors proposes them by range search: only
   :data:`NPROBE` lists of about 4·√n are searched, and the scores it returns are exact
   inner products. Near-duplicates sit so close together that they share a list or a
   neighbouring one. ``bench/dedup.py`` measures what the index misses against the exact
   pairs.
2. **Groups** (:func:`group_pairs`): a row is in at most one group, and every member is at
   least the threshold from its group's representative, not merely linked to it through a
   chain of copies. Representatives are taken greedily: the row with the most
   near-duplicates first (ties to the smaller id, so the groups do not depend on the order
   the store returned the rows in) takes all its near-duplicates not yet in a group.

This runs in a trusted process that holds the decrypted vectors (the ``pixlake dedup``
job, as export and re-index do); the store only ever holds ciphertexts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pixlake.platform.errors import ConfigError

DEFAULT_THRESHOLD = 0.95
EXACT_MAX_ROWS = 20_000  # up to here an exact blocked product is cheaper than training an index
EXACT_BLOCK = 2_048  # rows per block of the exact product: 2,048 x 20,000 float32 scores = 160 MB
NPROBE = 16  # IVF lists searched per row
# float32 rounding: a row's cosine with an exact copy of itself can come out at 0.99999994,
# so a pair within this much of the threshold counts (threshold 1.0 keeps exact copies).
SCORE_SLACK = 1e-6


@dataclass(frozen=True)
class Group:
    """One group of near-duplicates, by row position.

    Attributes:
        representative: the row the others are near.
        members: ``(row, score to the representative)`` of the other rows, best first.
    """

    representative: int
    members: tuple[tuple[int, float], ...]

    @property
    def size(self) -> int:
        """Rows in the group, the representative included."""
        return 1 + len(self.members)


def check_threshold(threshold: float) -> float:
    """The threshold, or ConfigError when it is not a number in (0, 1]."""
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not (0 < threshold <= 1):
        raise ConfigError(f"threshold must be a cosine similarity in (0, 1], got {threshold!r}")
    return float(threshold)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 and contiguous (zero rows stay zero)."""
    x = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1), dtype=np.float32)


def near_pairs(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of rows whose cosine is at least ``threshold``.

    Args:
        vectors: ``(n, dim)`` exact vectors (normalised here).
        threshold: cosine in (0, 1].

    Returns:
        ``(i, j, score)`` arrays with ``i < j``, each pair once.
    """
    threshold = check_threshold(threshold)
    x = unit_rows(vectors)
    n = len(x)
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    found = _exact_pairs(x, threshold) if n <= EXACT_MAX_ROWS else _indexed_pairs(x, threshold)
    i, j, s = (np.concatenate(part) for part in zip(*found))  # both paths give at least one block
    keep = i != j  # each row meets itself
    # A pair is met from both ends when each end's probed lists hold the other, and from one
    # end only when not: keep it once, whichever end found it.
    i, j, s = np.minimum(i[keep], j[keep]), np.maximum(i[keep], j[keep]), s[keep]
    key = i.astype(np.int64) * n + j
    _, first = np.unique(key, return_index=True)
    return i[first], j[first], s[first].astype(np.float32)


def _exact_pairs(x: np.ndarray, threshold: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    found = []
    for start in range(0, len(x), EXACT_BLOCK):
        scores = x[start:start + EXACT_BLOCK] @ x.T
        rows, cols = np.nonzero(scores >= threshold - SCORE_SLACK)
        found.append((rows.astype(np.int64) + start, cols.astype(np.int64), scores[rows, cols]))
    return found


def choose_lists(n: int) -> int:
    """IVF lists for ``n`` rows: about 4·√n, and at least 39 training rows per list (faiss)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def _indexed_pairs(x: np.ndarray, threshold: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    import faiss

    n, dim = x.shape
    lists = choose_lists(n)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    sample = x[np.random.default_rng(0).choice(n, size=min(n, 64 * lists), replace=False)]
    index.train(sample)
    index.add(x)
    index.nprobe = min(NPROBE, lists)
    found = []
    # faiss's inner-product range search keeps scores above the radius: start just below.
    radius = threshold - 2 * SCORE_SLACK
    for start in range(0, n, 65_536):  # bounded result buffers
        lims, scores, cols = index.range_search(x[start:start + 65_536], radius)
        rows = np.repeat(np.arange(len(lims) - 1, dtype=np.int64), np.diff(lims.astype(np.int64))) + start
        keep = scores >= threshold - SCORE_SLACK
        found.append((rows[keep], cols[keep].astype(np.int64), scores[keep]))
    return found


def group_pairs(n: int, i: np.ndarray, j: np.ndarray, scores: np.ndarray, order: Sequence | None = None) -> list[Group]:
    """Greedy groups from near-duplicate pairs.

    Args:
        n: rows.
        i, j, scores: the pairs (:func:`near_pairs`).
        order: a sort key per row for ties (for example the row ids); default the row positions.

    Returns:
        The groups, largest first; every row in at most one, every member at least the
        threshold from its representative.
    """
    if len(i) == 0:
        return []
    rank = np.argsort(np.argsort(np.asarray(order), kind="stable"), kind="stable") if order is not None else np.arange(n)
    # Both directions of every pair, grouped by their first row (a CSR adjacency).
    a, b, s = np.concatenate([i, j]), np.concatenate([j, i]), np.concatenate([scores, scores])
    by_row = np.lexsort((-s, a))
    a, b, s = a[by_row], b[by_row], s[by_row]
    starts = np.searchsorted(a, np.arange(n + 1))
    degree = np.diff(starts)
    assigned = np.zeros(n, bool)
    groups = []
    for row in sorted(np.nonzero(degree)[0], key=lambda r: (-degree[r], rank[r])):
        if assigned[row]:
            continue
        nbrs, sc = b[starts[row]:starts[row + 1]], s[starts[row]:starts[row + 1]]
        free = ~assigned[nbrs]
        if not free.any():
            continue
        assigned[row] = True
        assigned[nbrs[free]] = True
        groups.append(Group(int(row), tuple((int(m), float(v)) for m, v in zip(nbrs[free], sc[free]))))
    return sorted(groups, key=lambda g: (-g.size, rank[g.representative]))


PREVIEW_GROUPS = 10  # groups shown in the job's JSON summary


@dataclass(frozen=True)
class Duplicates:
    """The near-duplicate groups of one tenant's rows.

    Attributes:
        rows: rows read (the tenant's, less any subject being erased).
        threshold: the cosine a member is at least from its representative.
        groups: per group, ``(id, source, score to the representative)`` of its
            representative first (score 1.0), then its members best first.
    """

    rows: int
    threshold: float
    groups: list[list[tuple[str, str, float]]]

    @property
    def rows_in_groups(self) -> int:
        """Rows that belong to a group."""
        return sum(len(g) for g in self.groups)

    def table(self):
        """One pyarrow row per member: ``group``, ``id``, ``source``, ``score`` (to the
        group's representative) and ``representative``."""
        import pyarrow as pa

        flat = [(n, id_, source, score, k == 0) for n, g in enumerate(self.groups) for k, (id_, source, score) in enumerate(g)]
        columns = list(zip(*flat)) if flat else [[]] * 5
        return pa.table({"group": pa.array(columns[0], pa.int64()), "id": pa.array(columns[1], pa.string()),
                         "source": pa.array(columns[2], pa.string()), "score": pa.array(columns[3], pa.float32()),
                         "representative": pa.array(columns[4], pa.bool_())})

    def summary(self, seconds: float) -> dict:
        """The job's JSON summary, with the first :data:`PREVIEW_GROUPS` groups."""
        return {"rows": self.rows, "groups": len(self.groups), "rows_in_groups": self.rows_in_groups,
                "threshold": self.threshold, "seconds": round(seconds, 3),
                "groups_preview": [{"representative": {"id": g[0][0], "source": g[0][1]},
                                    "members": [{"id": i, "source": s, "score": round(sc, 6)} for i, s, sc in g[1:]]}
                                   for g in self.groups[:PREVIEW_GROUPS]]}


def find_duplicates(ids: Sequence[str], sources: Sequence[str], vectors: np.ndarray, threshold: float) -> Duplicates:
    """Group near-duplicates among rows given by id, source and exact vector.

    Raises:
        ConfigError: the threshold is not in (0, 1].
    """
    threshold = check_threshold(threshold)
    i, j, s = near_pairs(vectors, threshold)
    groups = group_pairs(len(ids), i, j, s, order=list(ids))
    return Duplicates(len(ids), threshold, [
        [(ids[g.representative], sources[g.representative], 1.0)] + [(ids[m], sources[m], score) for m, score in g.members]
        for g in groups])


def collapse(vectors: np.ndarray, limit: int, threshold: float = DEFAULT_THRESHOLD) -> list[tuple[int, int]]:
    """Collapse near-duplicates among ranked search results: at most one per group, the best.

    Walks the results best first; a result at least ``threshold`` from one already kept
    counts as a copy of the best such one and is dropped. Copies are counted among every
    result given, including those ranked after the ``limit``-th kept one.

    Args:
        vectors: ``(n, dim)`` exact unit vectors of the results, best first.
        limit: how many results to keep at most.
        threshold: cosine in (0, 1] at which two results are copies.

    Returns:
        ``(position, copies)`` of the kept results, best first: ``copies`` is how many
        dropped results it stands for.
    """
    threshold = check_threshold(threshold)
    x = np.asarray(vectors, np.float32)
    kept: list[int] = []
    copies: list[int] = []
    for n in range(len(x)):
        if kept:
            near = x[kept] @ x[n] >= threshold - SCORE_SLACK
            if near.any():
                copies[int(np.argmax(near))] += 1  # the best-ranked kept result it is near
                continue
        if len(kept) < limit:
            kept.append(n)
            copies.append(0)
    return list(zip(kept, copies))
