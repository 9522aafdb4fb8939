"""A generated corpus of awkward and hostile image files, for tests at any level.

Everything is made with Pillow/numpy at call time (no downloads) and given a realistic
file name, so the same corpus can feed unit tests of ``decode_image`` and end-to-end
jobs that read a directory. Expected outcomes live next to the generator so every
test agrees on them.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)

# name -> (width, height) each must_embed file decodes to (after EXIF rotation).
EXPECTED_SIZES: dict[str, tuple[int, int]] = {
    "cmyk.jpg": (32, 24),
    "gray16.png": (32, 24),
    "palette.png": (32, 24),
    "palette_transparent.png": (32, 24),
    "alpha.png": (32, 24),
    "gray_alpha.png": (32, 24),
    "gray.png": (32, 24),
    "bilevel.png": (32, 24),
    "float.tif": (32, 24),
    "animated.gif": (32, 24),
    "exif_rotated.jpg": (24, 40),  # stored 40x24 with orientation 6
    "photo.webp": (32, 24),
    "photo.bmp": (32, 24),
    "multipage.tif": (32, 24),
    "one_pixel.png": (1, 1),
}

# name -> rejection codes acceptable for each must_reject file.
EXPECTED_REJECTION_CODES: dict[str, tuple[str, ...]] = {
    "truncated.jpg": ("truncated",),
    "empty.jpg": ("empty",),
    "text.jpg": ("not_an_image",),
    "page.png": ("unsupported_format",),
    "portable_pixmap.jpg": ("unsupported_format",),
    # Junk after a JPEG SOI marker fails wherever the parser first runs out of sense.
    "junk_header.jpg": ("truncated", "corrupt", "not_an_image"),
    "bomb.png": ("decompression_bomb",),
    "bomb_huge.png": ("decompression_bomb",),
}

BOMB_SIZE = (10001, 10001)  # 100,020,001 pixels: just over the default 100M cap
BOMB_HUGE_SIZE = (20000, 20000)  # 400M pixels: past Pillow's hard DecompressionBombError


def write_bad_input_corpus(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Write the corpus into ``root`` (created if missing).

    Args:
        root: Directory to write into; existing files with the same names are replaced.

    Returns:
        ``(must_embed, must_reject)``: file name -> path. Expected outcomes are in
        :data:`EXPECTED_SIZES` and :data:`EXPECTED_REJECTION_CODES`.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    embed = {name: root / name for name in EXPECTED_SIZES}
    reject = {name: root / name for name in EXPECTED_REJECTION_CODES}
    for name, path in {**embed, **reject}.items():
        path.write_bytes(_BUILDERS[name]())
    return embed, reject


def halves(left: tuple[int, ...], right: tuple[int, ...], size=(32, 24), mode="RGB"):
    """An image whose left half is ``left`` and right half ``right``."""
    img = Image.new(mode, size, left)
    img.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return img


def _save(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _noise_jpeg() -> bytes:
    # Noise defeats compression, so half the file really is half the scan data.
    pixels = np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    return _save(Image.fromarray(pixels), "JPEG", quality=90)


def _palette(transparent: bool) -> bytes:
    img = Image.new("P", (32, 24), 0)
    img.putpalette([*GREEN, *BLUE] + [0] * 762)
    img.paste(1, (16, 0, 32, 24))
    return _save(img, "PNG", **({"transparency": 0} if transparent else {}))


def _exif_rotated() -> bytes:
    img = halves(RED, BLUE, size=(40, 24))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    return _save(img, "JPEG", quality=95, exif=exif.tobytes())


def _gif() -> bytes:
    frames = [Image.new("RGB", (32, 24), c).convert("P") for c in (RED, BLUE)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _tiff() -> bytes:
    pages = [Image.new("RGB", (32, 24), c) for c in (GREEN, RED)]
    return _save(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def _bilevel_png(width: int, height: int) -> bytes:
    """A black 1-bit PNG written by hand, so a huge canvas costs no memory to make."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = bytes(1 + (width + 7) // 8)  # filter byte 0 + all-zero (black) bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


_BUILDERS = {
    "cmyk.jpg": lambda: _save(halves((0, 255, 255, 0), (255, 255, 0, 0), mode="CMYK"), "JPEG", quality=95),
    "gray16.png": lambda: _save(Image.fromarray(np.full((24, 32), 32768, np.uint16)), "PNG"),
    "palette.png": lambda: _palette(transparent=False),
    "palette_transparent.png": lambda: _palette(transparent=True),
    "alpha.png": lambda: _save(halves((255, 0, 0, 0), (0, 0, 255, 255), mode="RGBA"), "PNG"),
    "gray_alpha.png": lambda: _save(Image.new("LA", (32, 24), (0, 128)), "PNG"),
    "gray.png": lambda: _save(Image.new("L", (32, 24), 100), "PNG"),
    "bilevel.png": lambda: _save(halves(0, 1, mode="1"), "PNG"),
    "float.tif": lambda: _save(Image.new("F", (32, 24), 0.5), "TIFF"),
    "animated.gif": _gif,
    "exif_rotated.jpg": _exif_rotated,
    "photo.webp": lambda: _save(halves(RED, BLUE), "WEBP", lossless=True),
    "photo.bmp": lambda: _save(halves(RED, BLUE), "BMP"),
    "multipage.tif": _tiff,
    "one_pixel.png": lambda: _save(Image.new("RGB", (1, 1), GREEN), "PNG"),
    "truncated.jpg": lambda: (lambda d: d[: len(d) // 2])(_noise_jpeg()),
    "empty.jpg": lambda: b"",
    "text.jpg": lambda: b"This is a plain text file that happens to be named .jpg\n",
    "page.png": lambda: b"<!DOCTYPE html>\n<html><head><title>404</title></head><body>Not found</body></html>\n",
    "portable_pixmap.jpg": lambda: _save(Image.new("RGB", (8, 8), RED), "PPM"),
    "junk_header.jpg": lambda: b"\xff\xd8\xff\xe0" + np.random.default_rng(7).bytes(4096),
    "bomb.png": lambda: _bilevel_png(*BOMB_SIZE),
    "bomb_huge.png": lambda: _bilevel_png(*BOMB_HUGE_SIZE),
}
