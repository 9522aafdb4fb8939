"""Embedding statistics per embed run, and drift against the previous run of the collection.

A new encoder, a preprocessing change or a broken input feed shows up in the embeddings
before anyone looks at search results: their raw norms move, their mean direction turns,
single dimensions shift. Each run accumulates mergeable moments of what the encoder
produced (plaintext, before encryption), the job report carries them with a drift score
against the last run of the same collection and encoder, and the statistics are kept as
JSON lines in the governance directory (``embedding-stats.jsonl``) for the next run.

What that file may hold. Per-dimension moments are sums of plaintext vectors: over one
image they *are* that image's embedding, and the file lives outside the encrypted rows and
outside any erasure. So:

* a run's per-dimension moments are written only when it embedded at least
  ``governance.drift_min_rows`` vectors (default 32); a smaller run records its counts and
  raw-norm moments only (scalars: they do not give back a direction);
* they are not written either when an erasure was under way while the run ran (it may have
  embedded the subject just before the deny-list took it, after the erasure dropped the
  collection's moments);
* an erasure that finds the subject's rows in a collection drops the per-dimension moments
  of every run of that collection (all its versions) before it deletes the rows.

Drift is scored against the latest run that still has its moments. What this does not
guarantee: the mean of N vectors is no formal anonymisation; someone who knows N-1 of a
run's vectors recovers the last, and a large run of one subject's images keeps that
subject's mean embedding until an erasure reaches the collection.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from pixlake.platform.governance.private import write_private

HISTORY_FILE = "embedding-stats.jsonl"
_MOMENTS = ("vec_sum", "vec_sqsum")  # the per-dimension fields: what an erasure drops
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

    def to_json(self, moments: bool = True) -> dict:
        """For the history file: the scalars, and the per-dimension moments when ``moments``."""
        out = {"dim": self.dim, "count": self.count, "nonfinite": self.nonfinite, "norm_sum": self.norm_sum,
               "norm_sqsum": self.norm_sqsum}
        if moments:
            out.update(vec_sum=self.vec_sum.tolist(), vec_sqsum=self.vec_sqsum.tolist())
        return out

    @classmethod
    def from_json(cls, data: dict) -> "EmbeddingStats":
        """Inverse of :meth:`to_json` (with moments)."""
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


def withheld_reason(stats: EmbeddingStats, min_rows: int, directory: Path, started_at: str) -> Optional[str]:
    """Why a run's per-dimension moments must not be written (see the module's docstring), or
    None when they may: fewer than ``min_rows`` vectors, or an erasure in the governance
    ``directory`` that had not verified its delete when the run started at ``started_at``."""
    if stats.count < min_rows:
        return f"fewer than {min_rows} vectors (governance.drift_min_rows)"
    from pixlake.platform.governance.ledger import LEDGER_FILE, Ledger

    if (Path(directory) / LEDGER_FILE).is_file() and Ledger(Path(directory) / LEDGER_FILE).unverified_since(started_at):
        return "an erasure was under way during the run"
    return None


def family(collection: str) -> str:
    """The live name a collection belongs to: ``images`` for ``images``, ``images_v3``
    (:mod:`pixlake.platform.lifecycle`'s versions) and the alias ``images`` alike."""
    return re.sub(r"_v\d+$", "", collection)


class StatsHistory:
    """The runs' statistics as JSON lines, one per run, in the governance directory.

    An entry without per-dimension moments carries ``moments_withheld`` (why). Appends and
    an erasure's rewrite take a lock file beside it, so neither loses the other's line.
    """

    def __init__(self, directory: Path):
        self.path = Path(directory) / HISTORY_FILE

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.with_name(HISTORY_FILE + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _entries(self) -> tuple[list[dict], int]:
        """The entries, and how many lines were torn (a crash mid-append): those are skipped."""
        entries, torn = [], 0
        for line in self.path.read_text().splitlines() if self.path.is_file() else []:
            try:
                entries.append(json.loads(line))
            except ValueError:
                torn += 1
        return entries, torn

    def last(self, db: str, collection: str, model: str) -> Optional[tuple[str, EmbeddingStats]]:
        """The latest run of this collection and encoder that has per-dimension moments:
        ``(run_id, stats)``, or None."""
        found = None
        for entry in self._entries()[0]:
            if (entry.get("db"), entry.get("collection"), entry.get("model")) == (db, collection, model) \
                    and all(k in entry["stats"] for k in _MOMENTS):
                found = entry
        return (found["run_id"], EmbeddingStats.from_json(found["stats"])) if found else None

    def append(self, run_id: str, db: str, collection: str, model: str, finished_at: str, stats: EmbeddingStats,
               withheld: Optional[str] = None) -> None:
        """Record a run (only runs that embedded something); ``withheld``: why its
        per-dimension moments are left out (None: they are written)."""
        entry = {"run_id": run_id, "db": db, "collection": collection, "model": model, "finished_at": finished_at,
                 "stats": stats.to_json(moments=withheld is None)}
        if withheld is not None:
            entry["moments_withheld"] = withheld
        with self._locked(), open(self.path, "a", encoding="utf-8",
                                  opener=lambda p, flags: os.open(p, flags, 0o600)) as f:
            f.write(json.dumps(entry) + "\n")

    def drop_moments(self, collection: str, reason: str) -> int:
        """Remove the per-dimension moments of every run of ``collection``'s family (see
        :func:`family`), marking each entry with ``reason``; returns how many entries lost
        them. The file is rewritten whole (torn lines go too) and atomically."""
        with self._locked():
            (entries, torn), dropped = self._entries(), 0
            for entry in entries:
                if family(entry.get("collection", "")) == family(collection) and any(k in entry["stats"] for k in _MOMENTS):
                    for k in _MOMENTS:
                        entry["stats"].pop(k, None)
                    entry["moments_withheld"] = reason
                    dropped += 1
            if dropped or torn:  # a torn line may hold part of a run's moments
                write_private(self.path, "".join(json.dumps(e) + "\n" for e in entries))
            return dropped
