"""Tests for pixlake.platform.images: safe decoding of untrusted image bytes."""

from __future__ import annotations

import hashlib
import io
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pydantic
import pytest
from PIL import Image, ImageFile

from pixlake.platform.images import (
    ALLOWED_FORMATS,
    DecodeLimits,
    Rejection,
    content_hash,
    decode_image,
)
from tests.badinputs import (
    BLUE,
    BOMB_SIZE,
    EXPECTED_REJECTION_CODES,
    EXPECTED_SIZES,
    GREEN,
    RED,
    WHITE,
    _bilevel_png,
    halves,
    write_bad_input_corpus,
)

# name -> {(x, y): expected RGB}; pixels away from the left/right boundary.
EXPECTED_PIXELS = {
    "cmyk.jpg": {(2, 2): RED, (29, 21): BLUE},
    "gray16.png": {(5, 5): (128, 128, 128)},  # 16-bit mid-grey must not clip to white
    "palette.png": {(2, 2): GREEN, (29, 21): BLUE},
    "palette_transparent.png": {(2, 2): WHITE, (29, 21): BLUE},
    "alpha.png": {(2, 2): WHITE, (29, 21): BLUE},  # transparent red composites to white
    "gray_alpha.png": {(5, 5): (127, 127, 127)},  # half-transparent black over white
    "gray.png": {(5, 5): (100, 100, 100)},
    "bilevel.png": {(2, 2): (0, 0, 0), (29, 21): WHITE},
    "float.tif": {(5, 5): (128, 128, 128)},
    "animated.gif": {(5, 5): RED},  # first frame, not the blue second one
    "exif_rotated.jpg": {(12, 2): RED, (12, 37): BLUE},  # left half ends up on top
    "photo.webp": {(2, 2): RED, (29, 21): BLUE},
    "photo.bmp": {(2, 2): RED, (29, 21): BLUE},
    "multipage.tif": {(5, 5): GREEN},  # first page, not the red second one
    "one_pixel.png": {(0, 0): GREEN},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_bad_input_corpus(tmp_path_factory.mktemp("bad_inputs"))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _close(actual, expected, tol=6):
    return all(abs(a - e) <= tol for a, e in zip(actual, expected))


def test_corpus_covers_every_expectation(corpus):
    must_embed, must_reject = corpus
    assert set(must_embed) == set(EXPECTED_SIZES) == set(EXPECTED_PIXELS)
    assert set(must_reject) == set(EXPECTED_REJECTION_CODES)
    assert all(p.exists() for p in [*must_embed.values(), *must_reject.values()])


@pytest.mark.parametrize("name", sorted(EXPECTED_SIZES))
def test_must_embed_decodes_to_rgb(corpus, name):
    out = decode_image(corpus[0][name].read_bytes())
    assert isinstance(out, Image.Image), out
    assert out.mode == "RGB"
    assert out.size == EXPECTED_SIZES[name]
    # Detached from the file: a plain in-memory image, not a lazily loaded ImageFile.
    assert not isinstance(out, ImageFile.ImageFile)
    for xy, colour in EXPECTED_PIXELS[name].items():
        assert _close(out.getpixel(xy), colour), (name, xy, out.getpixel(xy), colour)


def test_exif_rotation_comes_out_upright(corpus):
    out = decode_image(corpus[0]["exif_rotated.jpg"].read_bytes())
    with Image.open(corpus[0]["exif_rotated.jpg"]) as raw:
        assert raw.size == (40, 24)  # stored landscape
    assert out.size == (24, 40)  # displayed portrait
    top, bottom = out.crop((0, 0, 24, 18)), out.crop((0, 22, 24, 40))
    assert _close(np.asarray(top).reshape(-1, 3).mean(0), RED, tol=10)
    assert _close(np.asarray(bottom).reshape(-1, 3).mean(0), BLUE, tol=10)


def test_sixteen_bit_gradient_keeps_its_shape():
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))
    out = decode_image(_png(Image.fromarray(ramp)))
    row = np.asarray(out)[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and abs(row[128] - 128) <= 2
    assert np.all(np.diff(row) >= 0)


def test_rgb_with_transparent_colour_key_composites_on_white():
    img = halves(RED, BLUE)
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=RED)
    out = decode_image(buf.getvalue())
    assert out.getpixel((2, 2)) == WHITE and out.getpixel((29, 21)) == BLUE


@pytest.mark.parametrize("name", sorted(EXPECTED_REJECTION_CODES))
def test_must_reject(corpus, name):
    out = decode_image(corpus[1][name].read_bytes())
    assert isinstance(out, Rejection), name
    assert out.code in EXPECTED_REJECTION_CODES[name], out.reason
    assert out.reason.startswith(f"{out.code}: ") and len(out.reason) < 300


def test_rejection_reasons_are_specific(corpus):
    reject = corpus[1]
    assert decode_image(reject["empty.jpg"].read_bytes()).reason == "empty: zero-byte input"
    assert decode_image(reject["page.png"].read_bytes()).reason == "unsupported_format: HTML"
    assert decode_image(reject["portable_pixmap.jpg"].read_bytes()).reason == "unsupported_format: PPM"
    assert decode_image(reject["text.jpg"].read_bytes()).reason == (
        "not_an_image: cannot identify image file")


def test_default_cap_bomb_is_small_on_disk_and_rejected_from_its_header(corpus):
    path = corpus[1]["bomb.png"]
    assert BOMB_SIZE[0] * BOMB_SIZE[1] > DecodeLimits().max_pixels
    assert path.stat().st_size < 64 * 1024
    out = decode_image(path.read_bytes())
    pixels = BOMB_SIZE[0] * BOMB_SIZE[1]
    # Our own header check, not a failed decode, must be what rejects it.
    assert out == Rejection(f"decompression_bomb: {pixels} pixels > cap {DecodeLimits().max_pixels}")


def test_custom_pixel_cap_is_checked_before_decoding():
    data = _bilevel_png(2000, 2000)
    out = decode_image(data, DecodeLimits(max_pixels=1_000_000))
    assert out == Rejection("decompression_bomb: 4000000 pixels > cap 1000000")
    at_cap = decode_image(_bilevel_png(1000, 1000), DecodeLimits(max_pixels=1_000_000))
    assert isinstance(at_cap, Image.Image) and at_cap.size == (1000, 1000)


def test_byte_cap():
    data = _png(Image.new("RGB", (16, 16), RED))
    out = decode_image(data, DecodeLimits(max_bytes=len(data) - 1))
    assert out == Rejection(f"too_large: {len(data)} bytes > cap {len(data) - 1}")
    assert isinstance(decode_image(data, DecodeLimits(max_bytes=len(data))), Image.Image)


def test_decode_limits_validation():
    assert DecodeLimits() == DecodeLimits(max_bytes=50 * 1024 * 1024, max_pixels=100_000_000)
    with pytest.raises(pydantic.ValidationError):
        DecodeLimits(max_pixels=0)
    with pytest.raises(pydantic.ValidationError):
        DecodeLimits(max_pixel=5)  # typo'd field names are errors, not ignored
    assert all(f.description for f in DecodeLimits.model_fields.values())


def test_content_hash():
    assert content_hash(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    data = b"\x89PNG not really"
    assert content_hash(data) == hashlib.sha256(data).hexdigest()


def test_allowed_formats():
    assert ALLOWED_FORMATS == {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"}


def test_pillow_globals_untouched(corpus):
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    for path in [*corpus[0].values(), *corpus[1].values()]:
        decode_image(path.read_bytes())
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters)) == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def _outcome(out):
    return out.reason if isinstance(out, Rejection) else (out.size, out.tobytes())


def test_concurrent_decoding_matches_serial(corpus):
    paths = [p for p in [*corpus[0].values(), *corpus[1].values()] if p.name != "bomb_huge.png"]
    blobs = [p.read_bytes() for p in paths] * 4
    serial = [_outcome(decode_image(b)) for b in blobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = [_outcome(o) for o in pool.map(decode_image, blobs)]
    assert parallel == serial


def test_multi_picture_jpeg_is_accepted_as_jpeg():
    buf = io.BytesIO()
    frames = [Image.new("RGB", (32, 24), c) for c in (RED, BLUE)]
    frames[0].save(buf, "MPO", save_all=True, append_images=frames[1:])
    with Image.open(io.BytesIO(buf.getvalue())) as raw:
        assert raw.format == "MPO"
    out = decode_image(buf.getvalue())
    assert isinstance(out, Image.Image) and _close(out.getpixel((5, 5)), RED)


_MAGIC = [b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00",
          b"MM\x00*", b"RIFF\x00\x01\x00\x00WEBPVP8 "]


def _check_safe(data: bytes) -> None:
    out = decode_image(data)
    assert isinstance(out, (Image.Image, Rejection))
    if isinstance(out, Image.Image):
        assert out.mode == "RGB"


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF
def test_never_raises_on_random_bytes():
    rng = np.random.default_rng(1234)
    for i in range(200):
        _check_safe(_MAGIC[i % len(_MAGIC)] + rng.bytes(int(rng.integers(0, 2048))))


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF
def test_never_raises_on_truncated_or_flipped_files(corpus):
    rng = np.random.default_rng(5678)
    sources = [corpus[0][n].read_bytes() for n in ("photo.bmp", "animated.gif", "multipage.tif")]
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    png = _png(Image.fromarray(noisy))
    for _ in range(200):
        _check_safe(png[: int(rng.integers(0, len(png)))])
    for _ in range(100):
        src = bytearray(sources[int(rng.integers(0, len(sources)))])
        for pos in rng.integers(0, len(src), size=4):
            src[pos] = int(rng.integers(0, 256))
        _check_safe(bytes(src))
