"""Report stage: the job's JSON report and its one-screen summary."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional


@dataclass
class JobReport:
    """What an embed run did. ``to_dict()`` is the JSON contract of ``--report``."""

    run_id: str
    model: str
    source: str
    db: str
    backend: str
    collection: str
    index_type: str
    index_note: str
    embedded: int = 0
    skipped: int = 0
    erased: int = 0
    rejected: int = 0
    rejections: list[dict] = field(default_factory=list)
    # --near-duplicates skip|link: rows found near a stored row or an earlier row of the run
    # (skipped ones are counted in `skipped` too); listed as {"id", "near_duplicate_of",
    # "stored"} (and "source" when not stored), up to job.max_rejections_listed
    near_duplicates: int = 0
    near_duplicate_rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    images_per_s: float = 0.0
    collection_count: Optional[int] = None
    started_at: str = ""
    finished_at: str = ""
    device: str = ""
    decode: str = ""
    protection: str = ""
    store_retries: int = 0  # store calls retried while a Milvus server was down or restarting
    # seconds from the job's start: "ray" (Ray up), "owners" (its actors up), "encoder" (the
    # driver's copy loaded), "pipeline" (Ray Data starts), "first_embedded" (a first batch embedded)
    startup: dict = field(default_factory=dict)
    embedding_stats: dict = field(default_factory=dict)  # drift.EmbeddingStats.summary() of this run
    drift: Optional[dict] = None  # {"previous_run", "score", "mean_cosine", "norm_shift"}, None on a first run

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (keys include the contract: run_id, model, source,
        embedded, skipped, rejected, rejections, seconds, images_per_s)."""
        return asdict(self)

    def write(self, path: Path) -> None:
        """Write the JSON report, creating parent directories."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def summary(self) -> str:
        """A one-screen, human-readable summary."""
        lines = [
            f"pixlake embed {self.run_id}",
            f"  source      {self.source}",
            f"  model       {self.model} on {self.device} (decode: {self.decode})",
            f"  store       {self.collection} in {self.db} ({self.backend}, index {self.index_type}: {self.index_note})",
            f"  protection  {self.protection}",
            f"  embedded    {self.embedded}",
            f"  skipped     {self.skipped} (already embedded or repeated; {self.erased} of erased subjects)",
            f"  rejected    {self.rejected}",
        ]
        if self.near_duplicates:
            stored = sum(r["stored"] for r in self.near_duplicate_rows)
            lines.insert(-1, f"  near-dups   {self.near_duplicates} (of a stored or earlier image"
                         + (f"; the first {len(self.near_duplicate_rows)} listed, {stored} of them stored and linked)"
                            if self.near_duplicate_rows else ")"))
        by_code = Counter(r["reason"].split(":", 1)[0] for r in self.rejections)
        for code, n in by_code.most_common(8):
            lines.append(f"    {code:<22} {n}")
        if self.embedding_stats.get("count"):
            e = self.embedding_stats
            against = (f"drift {self.drift['score']:.3f} vs run {self.drift['previous_run']}" if self.drift
                       else "no earlier run of this collection and model to compare")
            lines.append(f"  embeddings  raw norm {e['norm_mean']:.3f} ± {e['norm_std']:.3f}; {against}")
        if self.store_retries:
            lines.append(f"  store       {self.store_retries} calls retried while Milvus was unavailable")
        first = self.startup.get("first_embedded")
        lines.append(f"  time        {self.seconds:.1f} s, {self.images_per_s:.1f} images/s"
                     + (f" (first batch embedded after {first:.1f} s)" if first is not None else ""))
        if self.collection_count is not None:
            lines.append(f"  collection  {self.collection_count} rows")
        return "\n".join(lines)
