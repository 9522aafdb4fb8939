"""Small previews of stored images for the search page, drawn from their sources.

An untrusted source goes through the same safe decoder as the embed job (format
allow-list, byte and pixel caps, EXIF orientation), then is shrunk and re-encoded as
JPEG, so a browser never parses the original file.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from typing import Optional

from pixlake.platform.errors import SourceError
from pixlake.platform.images import DecodeLimits, Rejection, decode_image

DEFAULT_SIDE = 256  # a results grid cell on a high-density screen
MIN_SIDE, MAX_SIDE = 16, 1024


class ThumbnailError(SourceError):
    """The source is an image the decoder refuses; ``reason`` is the decoder's."""

    def __init__(self, reason: str):
        super().__init__(f"source image rejected: {reason}")
        self.reason = reason


def make_thumbnail(data: bytes, side: int = DEFAULT_SIDE, limits: Optional[DecodeLimits] = None) -> bytes:
    """A JPEG no larger than ``side``×``side`` pixels, aspect kept (never enlarged).

    Args:
        data: the encoded source image (untrusted).
        side: the longest edge of the thumbnail, in pixels.
        limits: decoder caps; defaults when None.

    Returns:
        The JPEG bytes.

    Raises:
        ThumbnailError: the decoder rejected the source (reason included).
    """
    from PIL import Image

    image = decode_image(data, limits, draft_side=side)
    if isinstance(image, Rejection):
        raise ThumbnailError(image.reason)
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, optimize=True)
    return out.getvalue()


class ThumbnailCache:
    """A thread-safe LRU of thumbnails bounded by total bytes.

    Keys include the row's keyed content hash, so a re-embedded item never shows an old
    picture. The cache never decides who may see an entry: callers look the row up in
    the caller's tenant first (an erased row is gone there), then ask the cache.

    Args:
        max_bytes: the most thumbnail bytes held; the least recently used go first.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> Optional[bytes]:
        """The cached thumbnail, or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple, value: bytes) -> None:
        """Keep a thumbnail, evicting the least recently used past ``max_bytes``."""
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            self._bytes += len(value) - (len(old) if old is not None else 0)
            self._entries[key] = value
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """Bytes held now."""
        return self._bytes


class Thumbnailer:
    """Draws (and caches) thumbnails of rows' sources.

    Args:
        limits: decoder caps; the embed job's, so whatever it embedded can be drawn.
        cache_bytes: the cache's bound.
    """

    def __init__(self, limits: DecodeLimits, cache_bytes: int = 64 * 1024 * 1024):
        from pixlake.platform.source_files import SourceReader

        self.limits = limits
        self.reader = SourceReader(limits.max_bytes)
        self.cache = ThumbnailCache(cache_bytes)

    def draw(self, source: str, content_hash: str, side: int = DEFAULT_SIDE) -> bytes:
        """The JPEG thumbnail of the image at ``source`` (cached by content hash and side).

        Raises:
            SourceUnavailable: nothing to read at ``source``.
            SourceTooLarge, ThumbnailError: the source is over the caps or not a readable image.
            OSError, ValueError: the filesystem could not read it.
        """
        key = (content_hash, side)
        thumb = self.cache.get(key)
        if thumb is None:
            thumb = make_thumbnail(self.reader.read_source(source), side, self.limits)
            self.cache.put(key, thumb)
        return thumb
