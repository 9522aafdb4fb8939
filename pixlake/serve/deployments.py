"""Ray Serve deployments behind the HTTP ingress: a batched query encoder and a searcher.

They reach torch and Milvus only through ``pixlake.platform``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional

import numpy as np
from ray import serve

log = logging.getLogger(__name__)

# Small batches and a short wait: a lone query pays at most a few ms, a burst shares one forward pass.
MAX_BATCH, BATCH_WAIT_S = 32, 0.005


@serve.deployment(name="QueryEncoder", max_ongoing_requests=128)
class QueryEncoder:
    """Embeds query texts and prepared image pixels in batches (``@serve.batch``)."""

    def __init__(self, model: str, pretrained: Optional[str]):
        from pixlake.platform.encoder import load_encoder
        from pixlake.serve.metrics import Metrics

        self.encoder = load_encoder(model, pretrained)
        self.metrics = Metrics()

    def info(self) -> dict[str, Any]:
        """Fingerprint, dimension and preprocessing of the loaded model."""
        e = self.encoder
        return {"fingerprint": e.fingerprint, "dim": e.dim, "preprocess": e.preprocess}

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def embed_text(self, texts: list[str]) -> list[np.ndarray]:
        """One vector per text."""
        self.metrics.observe_batch("text", len(texts))
        # Off the event loop, so requests keep queueing for the next batch meanwhile.
        return list(await asyncio.to_thread(self.encoder.embed_texts, texts))

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def embed_pixels(self, pixels: list[np.ndarray]) -> list[np.ndarray]:
        """One vector per prepared image (uint8 HWC at the model's input size)."""
        self.metrics.observe_batch("image", len(pixels))
        return list(await asyncio.to_thread(self.encoder.embed_pixels, np.stack(pixels)))

    def metrics_text(self) -> bytes:
        """This replica's Prometheus exposition (encoder batch sizes)."""
        return self.metrics.render()[0]


@serve.deployment(name="Searcher", max_ongoing_requests=64)
class Searcher:
    """Owns the store. On milvus-lite exactly one replica may exist (one process per database)."""

    def __init__(self, db: str, collection: str):
        from pixlake.platform.store import MilvusStore

        self.store = MilvusStore(db, collection)

    def search(self, vector: np.ndarray, k: int, expr: str) -> list[dict]:
        """Hits for one query vector under a filter built by the ingress."""
        from pixlake.platform.query import search

        return search(self.store, vector, k=k, expr=expr)

    def describe(self) -> dict:
        """Name, rows, model fingerprint, index type."""
        return self.store.describe()

    def ready(self) -> bool:
        """Whether Milvus answers and the collection exists."""
        try:
            return self.store.exists()
        except Exception:  # readiness reports, never raises
            return False
