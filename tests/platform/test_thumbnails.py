"""Thumbnails from sources: the reader (files, WebDataset members), the safe decoder, the cache."""

from __future__ import annotations

import io
import tarfile

import pytest
from PIL import Image

from pixlake.platform.images import DecodeLimits
from pixlake.platform.source_files import SourceReader, SourceTooLarge, SourceUnavailable
from pixlake.platform.thumbnails import ThumbnailCache, Thumbnailer, ThumbnailError, make_thumbnail


def _png(size=(300, 150), colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def test_thumbnail_keeps_the_aspect_and_never_enlarges():
    thumb = Image.open(io.BytesIO(make_thumbnail(_png((300, 150)), 64)))
    assert thumb.format == "JPEG" and thumb.size == (64, 32)
    r, g, b = thumb.convert("RGB").getpixel((32, 16))
    assert r > 170 and g < 70 and b < 70
    assert Image.open(io.BytesIO(make_thumbnail(_png((40, 20)), 256))).size == (40, 20)


def test_thumbnail_goes_through_the_safe_decoder():
    with pytest.raises(ThumbnailError, match="corrupt|not_an_image|unsupported"):
        make_thumbnail(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    with pytest.raises(ThumbnailError, match="decompression_bomb"):
        make_thumbnail(_png((300, 300)), 64, DecodeLimits(max_pixels=10_000))


def test_reader_reads_files_and_says_why_not(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    reader = SourceReader(max_bytes=10_000)
    assert reader.read_source(str(tmp_path / "a.png")) == _png()
    assert reader.read_source(f"file://{tmp_path / 'a.png'}") == _png()
    with pytest.raises(SourceUnavailable, match="no such file"):
        reader.read_source(str(tmp_path / "gone.png"))
    with pytest.raises(SourceUnavailable, match="inline bytes"):
        reader.read_source("content:abc123")
    with pytest.raises(SourceTooLarge, match="too_large"):
        SourceReader(max_bytes=10).read_source(str(tmp_path / "a.png"))


def test_reader_reads_webdataset_members(tmp_path):
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("s/0001.json", b"{}"), ("s/0001.png", _png(colour=(1, 2, 3))), ("s/0002.jpg", _png())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    reader = SourceReader(max_bytes=100_000)
    assert reader.read_source(f"{shard}#s/0001") == _png(colour=(1, 2, 3))  # the image member, not the .json
    assert reader.read_source(f"{shard}#s/0002") == _png()
    with pytest.raises(SourceUnavailable, match="no image member"):
        reader.read_source(f"{shard}#s/0003")
    with pytest.raises(SourceUnavailable, match="no such file"):
        reader.read_source(f"{tmp_path / 'other.tar'}#s/0001")


def test_thumbnailer_caches_by_content_hash_and_side(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(_png())
    thumbs = Thumbnailer(DecodeLimits())
    first = thumbs.draw(str(path), "h1", 64)
    path.unlink()  # served from the cache from now on
    assert thumbs.draw(str(path), "h1", 64) == first and thumbs.cache.hits == 1
    with pytest.raises(SourceUnavailable):
        thumbs.draw(str(path), "h1", 32)  # another side is another entry


def test_cache_evicts_the_least_recently_used_past_its_byte_bound():
    cache = ThumbnailCache(max_bytes=10)
    cache.put(("a",), b"1234")
    cache.put(("b",), b"1234")
    assert cache.get(("a",)) == b"1234"  # a is now the most recent
    cache.put(("c",), b"1234")
    assert cache.get(("b",)) is None and cache.get(("a",)) and cache.get(("c",)) and cache.size_bytes == 8
    cache.put(("d",), b"x" * 11)  # larger than the whole cache: not kept, nothing evicted
    assert cache.get(("d",)) is None and len(cache) == 2


def test_large_jpeg_decodes_reduced_for_a_thumbnail_and_keeps_the_picture():
    from pixlake.platform.images import decode_image

    img = Image.new("RGB", (2400, 1200), (220, 20, 20))
    img.paste((20, 20, 220), (1200, 0, 2400, 1200))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    data = out.getvalue()
    assert decode_image(data).size == (2400, 1200)
    assert decode_image(data, draft_side=256).size == (600, 300)  # 1/4: the smallest scale keeping 256 px
    thumb = Image.open(io.BytesIO(make_thumbnail(data, 256))).convert("RGB")
    assert thumb.size == (256, 128)
    assert thumb.getpixel((40, 64))[0] > 180 and thumb.getpixel((216, 64))[2] > 180
    with pytest.raises(ThumbnailError, match="decompression_bomb"):  # the caps see the full size
        make_thumbnail(data, 256, DecodeLimits(max_pixels=2_000_000))
