"""Safe image decoding: the one place that turns untrusted bytes into a PIL image.

:func:`decode_image` never raises for bad input. It either returns a fresh RGB image
(upright per EXIF, first frame/page only) or a :class:`Rejection` whose ``reason``
starts with a stable code: ``empty``, ``too_large``, ``not_an_image``,
``unsupported_format``, ``decompression_bomb``, ``truncated``, ``unsupported_mode``,
``out_of_memory`` or ``corrupt``.

No Pillow global is changed (``Image.MAX_IMAGE_PIXELS``, ``LOAD_TRUNCATED_IMAGES``)
and the pixel cap is checked explicitly from the header, so results are the same from
any number of threads or processes. Pillow itself still refuses images over twice its
own MAX_IMAGE_PIXELS (~179M) while opening them; those become rejections as well.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pixlake.platform.settings import DecodeLimits  # the caps are settings (job.decode); imported from here too

logger = logging.getLogger(__name__)

# The explicit width*height cap below is the guard; Pillow's warning at its own lower
# threshold would only be noise in job logs. (A scoped catch_warnings is not
# thread-safe, so this is set once, for this warning class only.)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})

# Pillow reports multi-picture JPEGs (common from phone cameras) as MPO; frame 0 is a JPEG.
_FORMAT_ALIASES = {"MPO": "JPEG"}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_WHITE = (255, 255, 255)
# Non-image payloads that commonly arrive with image file names; named in the reason.
_SNIFF = ((b"<!doctype html", "HTML"), (b"<html", "HTML"), (b"<svg", "SVG"),
          (b"<?xml", "XML"), (b"%pdf", "PDF"), (b"pk\x03\x04", "ZIP"))


@dataclass(frozen=True)
class Rejection:
    """Why an input was not decoded; ``reason`` is ``"<code>: <detail>"``."""

    reason: str

    @property
    def code(self) -> str:
        """The machine-friendly prefix of :attr:`reason`, e.g. ``"truncated"``."""
        return self.reason.split(":", 1)[0]


def content_hash(data: bytes) -> str:
    """Hash raw input bytes, for de-duplication and stable ids.

    Args:
        data: The encoded file contents, exactly as received.

    Returns:
        The lowercase hex SHA-256 digest of ``data``.
    """
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, limits: DecodeLimits | None = None, draft_side: int | None = None) -> Image.Image | Rejection:
    """Decode untrusted bytes into an upright RGB image, or say why not.

    Args:
        data: The encoded file contents. Only the detected format matters, never a name.
        limits: Byte and pixel caps; ``DecodeLimits()`` defaults when ``None``.
        draft_side: when set, a JPEG may be decoded at a power-of-two reduction that keeps
            both edges at least this long (the decoder's DCT scaling: several times
            faster for a thumbnail of a large photo). The caps apply to the full size.

    Returns:
        A new RGB :class:`PIL.Image.Image` detached from ``data`` (first frame of a GIF,
        first page of a TIFF, EXIF orientation applied, alpha composited on white), or
        a :class:`Rejection`. Never raises for malformed input.
    """
    limits = limits or DecodeLimits()
    if len(data) == 0:
        return _reject("empty: zero-byte input")
    if len(data) > limits.max_bytes:
        return _reject(f"too_large: {len(data)} bytes > cap {limits.max_bytes}")
    return _decode(data, limits, draft_side)


def _decode(data: bytes, limits: DecodeLimits, draft_side: int | None = None) -> Image.Image | Rejection:
    try:
        # Only allow-listed parsers ever see the bytes; others are only named below.
        with Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS)) as img:
            width, height = img.size
            if width <= 0 or height <= 0:
                return _reject(f"corrupt: invalid size {width}x{height}")
            if width * height > limits.max_pixels:
                return _reject(f"decompression_bomb: {width * height} pixels "
                               f"> cap {limits.max_pixels}")
            if _FORMAT_ALIASES.get(img.format, img.format) not in ALLOWED_FORMATS:
                return _reject(f"unsupported_format: {img.format}")
            if draft_side and img.format == "JPEG":
                img.draft("RGB", (draft_side, draft_side))
            img.load()  # decode everything now, so truncation surfaces here
            img = _exif_upright(img)
            try:
                return _to_rgb(img)
            except ValueError as exc:  # a mode Pillow has no RGB conversion for
                return _reject(f"unsupported_mode: {img.mode} ({exc})")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return _reject(f"decompression_bomb: {exc}")
    except UnidentifiedImageError:
        other = _name_format(data)
        if other is not None:
            return _reject(f"unsupported_format: {other}")
        return _reject("not_an_image: cannot identify image file")
    except MemoryError:
        return _reject("out_of_memory: ran out of memory while decoding")
    except Exception as exc:  # noqa: BLE001 - any parser failure means "not this image"
        detail = str(exc) or type(exc).__name__
        code = "truncated" if "truncated" in detail.lower() else "corrupt"
        return _reject(f"{code}: {detail}")


def _reject(reason: str) -> Rejection:
    logger.debug("image rejected: %s", reason)
    return Rejection(reason)


def _name_format(data: bytes) -> str | None:
    """Name the format of bytes the allow-listed parsers refused, or ``None``."""
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    for magic, name in _SNIFF:
        if head.startswith(magic):
            return name
    try:
        # Header parse only (no load), to tell "PSD" apart from plain garbage.
        with Image.open(io.BytesIO(data)) as img:
            return img.format or None
    except Exception:  # noqa: BLE001 - unidentifiable is the expected outcome
        return None


def _exif_upright(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation; broken metadata is not a broken image, so keep going."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001
        logger.debug("ignoring unusable EXIF orientation: %s", exc)
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decoded mode to a new 8-bit RGB image."""
    if img.mode.startswith("I") or img.mode == "F":
        # Pillow's own I/I;16/F -> L conversion clips at 255, turning 16-bit mid-grey white.
        return Image.fromarray(_to_uint8(img)).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", img.size, _WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")  # always a copy, even when already RGB


def _to_uint8(img: Image.Image) -> np.ndarray:
    """Scale a high-bit-depth single-channel image into 0..255."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        return (arr >> 8).astype(np.uint8)
    arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        arr = arr * 255.0  # normalised float data
    elif lo >= 0.0 and hi <= 255.0:
        pass  # already 8-bit range
    elif lo >= 0.0 and hi <= 65535.0:
        arr = arr / 257.0  # 16-bit data stored as 32-bit "I"
    elif hi > lo:
        arr = (arr - lo) * (255.0 / (hi - lo))  # arbitrary range: stretch
    # else: a constant out-of-range image; clipping below is as good as any mapping.
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
