"""Query path shared by the CLI, the Serve app and the evaluation: encode a query, then
search it in a collection opened with :func:`open_collection` (decrypt and re-rank, shape
hits: :class:`~pixlake.platform.collection.QueryCollection`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

# The collection opened for querying lives in pixlake.platform.collection; importable from here too.
from pixlake.platform.collection import QueryCollection, check_fingerprint, open_collection  # noqa: F401
from pixlake.platform.encoder import Encoder
from pixlake.platform.errors import ConfigError, SourceError
from pixlake.platform.images import DecodeLimits, Rejection, decode_image


def encode_query(encoder: Encoder, text: Optional[str] = None, image: Optional[bytes] = None,
                 limits: Optional[DecodeLimits] = None) -> np.ndarray:
    """Embed a text or an image (encoded bytes, safely decoded) into one normalised vector.

    Raises:
        ConfigError: neither or both of text and image given.
        SourceError: the image is rejected by the safe decoder (reason included).
    """
    if (text is None) == (image is None):
        raise ConfigError("give exactly one of --text or --image")
    if text is not None:
        return encoder.embed_texts([text])[0]
    decoded = decode_image(image, limits)
    if isinstance(decoded, Rejection):
        raise SourceError(f"query image rejected: {decoded.reason}")
    return encoder.embed_images([decoded])[0]


def read_image_file(path: Path) -> bytes:
    """Read a query image file, with a clear error when it is missing."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise SourceError(f"cannot read image {path}: {e.strerror or e}") from e


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of normalised vectors, re-normalised (a text+image query)."""
    mixed = sum(w * v for w, v in zip(weights, vectors))
    norm = float(np.linalg.norm(mixed))
    return (mixed / norm).astype(np.float32) if norm > 0 else np.asarray(vectors[0], np.float32)
