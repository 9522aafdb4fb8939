"""Embedding statistics per embed run, and drift against the previous run of the collection.

A new encoder, a preprocessing change or a broken input feed shows up in the embeddings
before anyone looks at search results: their raw norms move, their mean direction turns,
single dimensions shift. Each run accumulates mergeable moments of what the encoder
produced (plaintext, before encryption), the job report carries them with a drift score
against the last run of the same collection and encoder, and the full statistics are kept
as JSON lines in the governance directory (``embedding-stats.jsonl``) for the next run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

HISTORY_FILE = "embedding-stats.jsonl"
NON_FINITE = "non_finite_embedding: the encoder produced NaN or Inf for this image"


@dataclass
class EmbeddingStats:
    """Mergeable moments of one run's embeddings.

    ``vec_sum``/``vec_sqsum`` are per-dimension sums over the L2-normalised vectors (the
    per-dimension sketch: mean and spread of every dimension); ``norm_*`` are over the
    encoder's raw feature norms, before normalisation (normalised vectors all have norm 1).
    """

    dim: int
    count: int = 0
    nonfinite: int = 0
    norm_sum: float = 0.0
    norm_sqsum: float = 0.0
    vec_sum: Optional[np.ndarray] = None
    vec_sqsum: Optional[np.ndarray] = None

    def __post_init__(self):
        self.vec_sum = np.zeros(self.dim) if self.vec_sum is None else np.asarray(self.vec_sum, np.float64)
        self.vec_sqsum = np.zeros(self.dim) if self.vec_sqsum is None else np.asarray(self.vec_sqsum, np.float64)

    @classmethod
    def of(cls, vectors: np.ndarray, norms: np.ndarray, nonfinite: int = 0) -> "EmbeddingStats":
        """Statistics of finite ``vectors`` (N, dim) with their raw ``norms``, plus a count of non-finite ones."""
        v = np.asarray(vectors, np.float64)
        n = np.asarray(norms, np.float64)
        return cls(v.shape[1], len(v), nonfinite, float(n.sum()), float((n * n).sum()), v.sum(0), (v * v).sum(0))

    def add(self, other: "EmbeddingStats") -> None:
        """Merge ``other`` into this one (the run-metrics actor does, per batch)."""
        self.count += other.count
        self.nonfinite += other.nonfinite
        self.norm_sum += other.norm_sum
        self.norm_sqsum += other.norm_sqsum
        self.vec_sum += other.vec_sum
        self.vec_sqsum += other.vec_sqsum

    @property
    def mean_vector(self) -> np.ndarray:
        return self.vec_sum / max(self.count, 1)

    @property
    def dim_std(self) -> np.ndarray:
        mean = self.mean_vector
        return np.sqrt(np.maximum(self.vec_sqsum / max(self.count, 1) - mean * mean, 0.0))

    def summary(self) -> dict:
        """The report's ``embedding_stats``: counts, raw-norm mean/std, and the mean vector's length."""
        n = max(self.count, 1)
        mean = self.norm_sum / n
        return {
            "count": self.count,
            "nonfinite": self.nonfinite,
            "norm_mean": round(mean, 6),
            "norm_std": round(math.sqrt(max(self.norm_sqsum / n - mean * mean, 0.0)), 6),
            "mean_vector_norm": round(float(np.linalg.norm(self.mean_vector)), 6),
            "dim_std_mean": round(float(self.dim_std.mean()), 6),
        }

    def to_json(self) -> dict:
        """Everything, for the history file."""
        return {"dim": self.dim, "count": self.count, "nonfinite": self.nonfinite, "norm_sum": self.norm_sum,
                "norm_sqsum": self.norm_sqsum, "vec_sum": self.vec_sum.tolist(), "vec_sqsum": self.vec_sqsum.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "EmbeddingStats":
        return cls(**data)


def drift(previous: EmbeddingStats, current: EmbeddingStats) -> dict:
    """How far ``current`` moved from ``previous``.

    Returns:
        ``score``: the mean over dimensions of |Δ mean| / pooled std (a standardised mean
        difference; ~0 for two samples of one distribution, and it grows as dimensions
        shift); ``mean_cosine``: cosine between the two mean vectors; ``norm_shift``: the
        change of the mean raw norm in units of the previous run's norm std.
    """
    pooled = np.sqrt((previous.dim_std ** 2 + current.dim_std ** 2) / 2) + 1e-12
    score = float(np.mean(np.abs(current.mean_vector - previous.mean_vector) / pooled))
    a, b = previous.mean_vector, current.mean_vector
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    p = previous.summary()
    shift = (current.summary()["norm_mean"] - p["norm_mean"]) / (p["norm_std"] or 1e-12)
    return {"score": round(score, 6), "mean_cosine": round(cosine, 6), "norm_shift": round(float(shift), 6)}


class StatsHistory:
    """The runs' statistics as JSON lines, one per run, in the governance directory."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / HISTORY_FILE

    def last(self, db: str, collection: str, model: str) -> Optional[tuple[str, EmbeddingStats]]:
        """The latest run of this collection and encoder: ``(run_id, stats)``, or None."""
        if not self.path.is_file():
            return None
        found = None
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn last line from a crash mid-append: ignore it
            if (entry.get("db"), entry.get("collection"), entry.get("model")) == (db, collection, model):
                found = entry
        return (found["run_id"], EmbeddingStats.from_json(found["stats"])) if found else None

    def append(self, run_id: str, db: str, collection: str, model: str, finished_at: str, stats: EmbeddingStats) -> None:
        """Record a run (only runs that embedded something)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"run_id": run_id, "db": db, "collection": collection, "model": model, "finished_at": finished_at,
                 "stats": stats.to_json()}
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
