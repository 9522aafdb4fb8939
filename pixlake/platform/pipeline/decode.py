"""Decode stage (CPU tasks): safe decode, then the PIL half of the model's preprocessing."""

from __future__ import annotations

import pyarrow as pa

from pixlake.platform.encoder import PreprocessSpec
from pixlake.platform.images import DecodeLimits, Rejection, decode_image
from pixlake.platform.pipeline.rows import OK, rejected, table


class DecodeImages:
    """Callable stage: encoded ``image`` bytes → uint8 ``pixels`` at the model's input size.

    Args:
        preprocess: the encoder's preprocessing spec.
        limits: safe-decode caps.
    """

    def __init__(self, preprocess: PreprocessSpec, limits: DecodeLimits):
        self.preprocess = preprocess
        self.limits = limits
        self._transform = None  # built on first use: tasks receive this object pickled

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self._transform is None:
            self._transform = self.preprocess.pil_transform()
        out = []
        for row in batch.to_pylist():
            data = row.pop("image")
            row["pixels"] = b""
            if row["status"] == OK:
                image = decode_image(data, self.limits)
                if isinstance(image, Rejection):
                    rejected(row, image.reason)
                else:
                    try:
                        row["pixels"] = self._transform(image).tobytes()
                    except (OSError, ValueError) as e:
                        rejected(row, f"corrupt: {e}")
            out.append(row)
        return table(out, [("pixels", pa.binary())])
