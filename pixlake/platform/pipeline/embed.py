"""Embed stage (actor pool; one GPU per actor when the cluster has GPUs)."""

from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np
import pyarrow as pa

from pixlake.platform.images.device import DeviceJpegDecoder
from pixlake.platform.drift import NON_FINITE, EmbeddingStats
from pixlake.platform.errors import ModelError
from pixlake.platform.images import DecodeLimits, Rejection
from pixlake.platform.pipeline.decode import prepare_pixels
from pixlake.platform.pipeline.rows import OK, rejected, table

log = logging.getLogger(__name__)


class EmbedImages:
    """Callable actor class: ``pixels`` (or ``jpeg`` bytes, decoded on the device) → L2-normalised float32 ``vector``.

    Args:
        model: open_clip config name.
        pretrained: tag, checkpoint path or ``none``.
        fingerprint: the driver's fingerprint; an actor that loads other weights refuses to run.
        threads: torch CPU threads (Ray gives actors one thread by default, which would
            leave the other cores of a CPU-only node idle).
        device: torch device; default CUDA (fp16) when the actor has a GPU, else CPU.
        limits: safe-decode caps, for JPEGs the device refuses and this actor decodes on CPU.
        stats: the run's metrics actor (a proxy of :class:`~pixlake.platform.pipeline.run_metrics.RunMetrics`)
            or None: batch latency and embedding statistics. Rows whose embedding is NaN or Inf are
            rejected either way, never stored.
    """

    def __init__(
        self,
        model: str,
        pretrained: Optional[str],
        fingerprint: str,
        threads: Optional[int] = None,
        device: Optional[str] = None,
        limits: Optional[DecodeLimits] = None,
        stats=None,
    ):
        import torch

        from pixlake.platform.encoder import load_encoder

        if not torch.cuda.is_available():
            torch.set_num_threads(threads or os.cpu_count() or 1)
        self.encoder = load_encoder(model, pretrained, device=device)
        if self.encoder.fingerprint != fingerprint:
            raise ModelError(f"actor loaded {self.encoder.fingerprint}, the job expects {fingerprint}")
        size = self.encoder.preprocess.size
        self.shape = (size, size, 3) if isinstance(size, int) else (size[0], size[1], 3)
        self.limits = limits or DecodeLimits()
        self._jpeg = None  # the device decoder, built when the first JPEG arrives
        self.stats = stats

    def __call__(self, batch: pa.Table) -> pa.Table:
        import time

        import torch

        started = time.perf_counter()
        rows = batch.to_pylist()
        pixels = {}  # row → (H, W, 3) uint8 tensor on the encoder's device
        host = [i for i, r in enumerate(rows) if r["status"] == OK and r["pixels"]]
        host_batch = None
        if host:  # decoded by the CPU tasks: one copy to the device
            stacked = np.stack([np.frombuffer(rows[i]["pixels"], np.uint8).reshape(self.shape) for i in host])
            host_batch = torch.from_numpy(stacked).to(self.encoder.device)
            pixels.update(zip(host, host_batch.unbind(0)))
        jpegs = [i for i, r in enumerate(rows) if r["status"] == OK and r.get("jpeg")]
        if jpegs:
            pixels.update(self._decode_jpegs(rows, jpegs))
        todo = sorted(pixels)
        batch_stats = None
        vectors = np.zeros((len(rows), self.encoder.dim), np.float32)
        if todo:
            # No JPEG rows: the host batch is already the whole batch, in order; no second copy.
            batch = host_batch if todo == host else torch.stack([pixels[i] for i in todo])
            embedded, norms = self.encoder.embed_pixels(batch, with_norms=True)
            finite = np.isfinite(embedded).all(axis=1) & np.isfinite(norms)
            for i in np.asarray(todo)[~finite]:
                rejected(rows[i], NON_FINITE)
            vectors[todo] = np.where(finite[:, None], embedded, 0.0)
            batch_stats = EmbeddingStats.of(embedded[finite], norms[finite], int((~finite).sum()))
        for r, v in zip(rows, vectors):
            r.pop("pixels"), r.pop("jpeg", None)
            r["vector"] = v
        out = table(rows, [("vector", pa.list_(pa.float32(), self.encoder.dim))])
        if self.stats is not None:
            self.stats.observe_stage("embed", time.perf_counter() - started, len(rows), batch_stats)
        return out

    def _decode_jpegs(self, rows: list[dict], todo: list[int]) -> dict[int, object]:
        """Decode rows' JPEG bytes on the device; the device's refusals on CPU, rejecting what fails there."""
        import torch

        if self._jpeg is None:
            self._jpeg = DeviceJpegDecoder(self.encoder.preprocess, self.encoder.device)
        out = {}
        for i, image in zip(todo, self._jpeg([rows[i]["jpeg"] for i in todo])):
            if image is None:
                image = prepare_pixels(rows[i]["jpeg"], self.limits, self.encoder.prepare)
                if isinstance(image, Rejection):
                    rejected(rows[i], image.reason)
                    continue
                image = torch.from_numpy(image).to(self.encoder.device)
            out[i] = image
        return out
