"""Small previews of stored images for the search page, drawn from their sources.

An untrusted source goes through the same safe decoder as the embed job (format
allow-list, byte and pixel caps, EXIF orientation), then is shrunk and re-encoded as
JPEG, so a browser never parses the original file.

A row's ``source`` is whatever its manifest said, so it may point at anything the serving
process can read (another tenant's file, ``/etc``, a swapped file): a thumbnail is drawn
only from bytes whose keyed content hash is the row's, and every failure to get such bytes
is one error with one message, so a caller learns nothing about what is at a path.
"""

from __future__ import annotations

import hmac
import io
import logging
import threading
from collections import OrderedDict
from typing import Callable, Optional

from pixlake.platform.errors import SourceError
from pixlake.platform.images import DecodeLimits, Rejection, content_hash as plain_content_hash, decode_image
from pixlake.platform.sources.reader import SourceReader, SourceUnavailable

log = logging.getLogger(__name__)

DEFAULT_SIDE = 256  # a results grid cell on a high-density screen
MIN_SIDE, MAX_SIDE = 16, 1024
# The one message of every source that yields no bytes of the row's content: missing,
# a directory, unreadable, over the cap, or holding other bytes.
NO_SOURCE = "the item's source image cannot be read"
# Thumbnails are drawn only at these sides (a request rounds up), so one item costs at most
# len(SIDES) draws and cache entries, however many sizes a client asks for.
SIDES = (64, 128, 256, 512, 1024)


def ladder_side(side: int) -> int:
    """The smallest side of :data:`SIDES` at least ``side`` (``MIN_SIDE..MAX_SIDE``)."""
    if not MIN_SIDE <= side <= MAX_SIDE:
        raise ValueError(f"thumbnail side {side} outside {MIN_SIDE}..{MAX_SIDE}")
    return next(s for s in SIDES if s >= side)


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

    def clear(self) -> int:
        """Drop every entry (an erasure: the cache does not know whose an entry is); returns how many."""
        with self._lock:
            dropped = len(self._entries)
            self._entries.clear()
            self._bytes = 0
            return dropped

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
        self.limits = limits
        self.reader = SourceReader(limits.max_bytes)
        self.cache = ThumbnailCache(cache_bytes)

    def draw(self, source: str, content_hash: str, side: int, keyed: Callable[[str], str],
             on_draw: Optional[Callable[[int], None]] = None) -> bytes:
        """The JPEG thumbnail of a row's image (cached by content hash and side), drawn only
        from bytes at ``source`` whose keyed content hash is the row's ``content_hash``.

        Args:
            source: the row's (opened) source.
            content_hash: the row's keyed content hash.
            side: the thumbnail's longest edge.
            keyed: the row's tenant's keyed hash of a plain SHA-256 hex digest
                (:func:`~pixlake.platform.governance.cipher.keyed_content_hash` under its identity key).
            on_draw: called with the source's size in bytes when the thumbnail is drawn rather
                than found in the cache (what the draw cost: the ingress charges it to the key).

        Raises:
            SourceUnavailable: no bytes of the row's content at ``source`` (always :data:`NO_SOURCE`).
            ThumbnailError: they are the row's, but the decoder refuses them.
        """
        key = (content_hash, side)
        thumb = self.cache.get(key)
        if thumb is None:
            data = self._content(source, content_hash, keyed)
            if on_draw is not None:
                on_draw(len(data))
            thumb = make_thumbnail(data, side, self.limits)
            self.cache.put(key, thumb)
        return thumb

    def _content(self, source: str, content_hash: str, keyed: Callable[[str], str]) -> bytes:
        """The bytes at ``source`` when they are the row's content."""
        try:
            data = self.reader.read_source(source)
        except (SourceError, OSError, ValueError) as e:
            log.debug("thumbnail source unreadable: %s", e)  # the cause stays in the server's log
            raise SourceUnavailable(NO_SOURCE) from None
        if not hmac.compare_digest(keyed(plain_content_hash(data)), content_hash):
            log.debug("thumbnail source holds other bytes than the row's")
            raise SourceUnavailable(NO_SOURCE)
        return data
