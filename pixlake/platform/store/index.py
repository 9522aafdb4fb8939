"""Index choice: the vector index a collection is built with, and how it is searched.

The parameters come from a saved :class:`~pixlake.platform.index_plan.IndexPlan` (the
one parser of plan files); a collection records its choice in its description, so every
later opener searches it as it was built, plan file or not.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from pixlake.platform.errors import ConfigError
from pixlake.platform.settings import LITE

if TYPE_CHECKING:  # imported where a plan is read: importing the store stays free of numpy
    from pixlake.platform.index_plan import IndexPlan

METRIC = "COSINE"
MAX_TOPK = 16384  # Milvus refuses a search limit above this
_HNSW = {"M": 16, "efConstruction": 200}


@dataclass(frozen=True)
class IndexChoice:
    """The vector index a collection uses, and why."""

    index_type: str
    params: dict
    search_params: dict
    reason: str
    rerank_factor: Optional[int] = None  # the plan's re-rank (candidates per hit), None without a plan

    def description(self) -> str:
        """The collection description that records this choice (see :func:`recorded_index`)."""
        return json.dumps({"index": dataclasses.asdict(self)})

    def search_params_for(self, k: int) -> dict:
        """Search parameters for ``k`` hits (HNSW needs ``ef >= k``)."""
        search = dict(self.search_params)
        if "ef" in search:
            search["ef"] = max(k, search["ef"])
        return {"metric_type": METRIC, "params": search}


def choose_index(backend: str, plan: Optional[IndexPlan] = None) -> IndexChoice:
    """Pick an index the backend really builds.

    milvus-lite accepts IVF_PQ but never builds it (search silently falls back to brute
    force), so it gets HNSW. A server builds IVF_PQ with the parameters of an index plan
    (``pixlake plan-index``: PQ measured on the corpus), and HNSW until one exists: a PQ
    code chosen blind can cost recall silently.
    """
    if backend == LITE:
        note = "; the index plan applies on a Milvus server" if plan else ""
        return IndexChoice("HNSW", dict(_HNSW), {"ef": 128}, f"milvus-lite builds no IVF_PQ; HNSW is its best real index{note}")
    if plan:
        recall = ", ".join(f"{q} {r['reranked']:.3f}" for q, r in plan.recall.items())
        return IndexChoice(plan.index_type, dict(plan.params), dict(plan.search_params),
                           f"planned: {plan.bytes_per_vector} bytes/vector, recall@{plan.k} after re-rank "
                           f"x{plan.rerank_factor} {recall}", plan.rerank_factor)
    return IndexChoice("HNSW", dict(_HNSW), {"ef": 128}, "no index plan; IVF_PQ needs planned parameters (pixlake plan-index)")


def planned_index(backend: str, plan_path: Optional[Path] = None) -> IndexChoice:
    """:func:`choose_index` with the plan saved at ``plan_path`` (none: no plan).

    Raises:
        ConfigError: the plan file is missing or malformed.
    """
    if not plan_path:
        return choose_index(backend)
    if not Path(plan_path).is_file():
        raise ConfigError(f"index plan not found: {plan_path} (make one with pixlake plan-index)")
    from pixlake.platform.index_plan import IndexPlan

    return choose_index(backend, IndexPlan.load(Path(plan_path)))


def recorded_index(description: Optional[str]) -> Optional[IndexChoice]:
    """The index a collection was created with, from its description; None when it records none."""
    try:
        saved = json.loads(description or "{}")
    except ValueError:
        return None
    return IndexChoice(**saved["index"]) if "index" in saved else None
