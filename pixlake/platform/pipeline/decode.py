"""Decode stage (CPU tasks): safe decode, then the PIL half of the model's preprocessing.

With ``device_jpeg`` (the job's ``--gpu-decode``) JPEGs the encoder's device can decode
only have their header checked here and travel compressed in ``jpeg``; the rest are
decoded here as usual (see :mod:`pixlake.platform.images.device`).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pyarrow as pa

from pixlake.platform.images.device import device_decodable
from pixlake.platform.encoder import PreprocessSpec
from pixlake.platform.images import DecodeLimits, Rejection, decode_image
from pixlake.platform.pipeline.rows import OK, rejected, table


def prepare_pixels(data: bytes, limits: DecodeLimits, transform: Callable[[Any], np.ndarray]) -> np.ndarray | Rejection:
    """Safe-decode ``data`` and apply the PIL half of the preprocessing, or say why not."""
    image = decode_image(data, limits)
    if isinstance(image, Rejection):
        return image
    try:
        return transform(image)
    except (OSError, ValueError) as e:
        return Rejection(f"corrupt: {e}")


class DecodeImages:
    """Callable stage: encoded ``image`` bytes → uint8 ``pixels`` at the model's input size
    (or, for device-decodable JPEGs under ``device_jpeg``, the checked bytes in ``jpeg``).

    Args:
        preprocess: the encoder's preprocessing spec.
        limits: safe-decode caps.
        device_jpeg: leave JPEGs the encoder's device can decode to the encoder.
    """

    def __init__(self, preprocess: PreprocessSpec, limits: DecodeLimits, device_jpeg: bool = False):
        self.preprocess = preprocess
        self.limits = limits
        self.device_jpeg = device_jpeg
        self._transform = None  # built on first use: tasks receive this object pickled

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self._transform is None:
            self._transform = self.preprocess.pil_transform()
        out = []
        for row in batch.to_pylist():
            data = row.pop("image")
            row["pixels"] = row["jpeg"] = b""
            if row["status"] == OK and self.device_jpeg and device_decodable(data, self.limits):
                row["jpeg"] = data
            elif row["status"] == OK:
                pixels = prepare_pixels(data, self.limits, self._transform)
                if isinstance(pixels, Rejection):
                    rejected(row, pixels.reason)
                else:
                    row["pixels"] = pixels.tobytes()
            out.append(row)
        return table(out, [("pixels", pa.binary()), ("jpeg", pa.binary())])
