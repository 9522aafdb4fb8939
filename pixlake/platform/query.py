"""Query path shared by the CLI and the Serve app: encode a query, search, shape hits."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pixlake.platform.encoder import Encoder
from pixlake.platform.errors import ConfigError, SourceError, StoreError
from pixlake.platform.images import DecodeLimits, Rejection, decode_image
from pixlake.platform.store import MilvusStore


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


def check_fingerprint(store: MilvusStore, fingerprint: str) -> None:
    """Refuse to query a collection embedded by another encoder (its vectors mean something else).

    Raises:
        StoreError: the collection holds another encoder's embeddings.
    """
    stored = store.model()
    if stored is not None and stored != fingerprint:
        raise StoreError(
            f"collection {store.collection} holds embeddings of {stored}; the query encoder is "
            f"{fingerprint}. Use the same --model/--pretrained as the embed job"
        )


def open_collection(db: str, collection: str, fingerprint: str) -> MilvusStore:
    """Open a collection for querying with an encoder of ``fingerprint``; close it when done.

    Raises:
        StoreError: the collection does not exist or holds another encoder's embeddings.
    """
    store = MilvusStore(db, collection)
    try:
        if not store.exists():
            raise StoreError(f"no collection {collection} in {db}; run `pixlake embed` first")
        check_fingerprint(store, fingerprint)
    except BaseException:
        store.close()
        raise
    return store


def search(store: MilvusStore, vector: np.ndarray, k: int = 10, expr: str = "") -> list[dict]:
    """Search the store with a query vector.

    Args:
        store: the collection.
        vector: normalised query vector.
        k: number of hits.
        expr: a filter from :func:`~pixlake.platform.store.build_filter` (never client text).

    Returns:
        Hits ``{"id", "source", "score", "meta"}``, best first.
    """
    hits = store.search([vector], k=k, filter=expr)[0]
    return [{"id": h["id"], "source": h["source"], "score": round(h["score"], 6), "meta": h["meta"]} for h in hits]


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of normalised vectors, re-normalised (a text+image query)."""
    mixed = sum(w * v for w, v in zip(weights, vectors))
    norm = float(np.linalg.norm(mixed))
    return (mixed / norm).astype(np.float32) if norm > 0 else np.asarray(vectors[0], np.float32)
