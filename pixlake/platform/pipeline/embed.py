"""Embed stage (actor pool; one GPU per actor when the cluster has GPUs)."""

from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np
import pyarrow as pa

from pixlake.platform.errors import ModelError
from pixlake.platform.pipeline.rows import OK, table

log = logging.getLogger(__name__)


class EmbedImages:
    """Callable actor class: ``pixels`` → L2-normalised float32 ``vector``.

    Args:
        model: open_clip config name.
        pretrained: tag, checkpoint path or ``none``.
        fingerprint: the driver's fingerprint; an actor that loads other weights refuses to run.
        threads: torch CPU threads (Ray gives actors one thread by default, which would
            leave the other cores of a CPU-only node idle).
        device: torch device; default CUDA (fp16) when the actor has a GPU, else CPU.
    """

    def __init__(
        self, model: str, pretrained: Optional[str], fingerprint: str, threads: Optional[int] = None, device: Optional[str] = None
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

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        todo = [i for i, r in enumerate(rows) if r["status"] == OK]
        vectors = np.zeros((len(rows), self.encoder.dim), np.float32)
        if todo:
            pixels = np.stack([np.frombuffer(rows[i]["pixels"], np.uint8).reshape(self.shape) for i in todo])
            vectors[todo] = self.encoder.embed_pixels(pixels)
        for r, v in zip(rows, vectors):
            del r["pixels"]
            r["vector"] = v
        return table(rows, [("vector", pa.list_(pa.float32(), self.encoder.dim))])
