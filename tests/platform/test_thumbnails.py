"""Thumbnails from sources: the reader (files, WebDataset members), the safe decoder, the cache."""

from __future__ import annotations

import io
import os
import tarfile
from functools import partial

import pyarrow as pa
import pytest
from PIL import Image

from pixlake.platform.governance.cipher import keyed_content_hash
from pixlake.platform.governance.service import Governance
from pixlake.platform.images import DecodeLimits
from pixlake.platform.pipeline.load import LoadItems
from pixlake.platform.sources.items import ITEM_SCHEMA
from pixlake.platform.settings import GovernanceSettings
from pixlake.platform.sources.reader import (
    SourceReader,
    SourceRefused,
    SourceTooLarge,
    SourceUnavailable,
    read_capped,
    split_location,
)
from pixlake.platform.thumbnails import NO_SOURCE, ThumbnailCache, Thumbnailer, ThumbnailError, ladder_side, make_thumbnail


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


@pytest.fixture
def acme(tmp_path):
    """(keyed, row_hash): the tenant's keyed hash of a plain digest (what the Searcher answers the
    ingress), and the content hash the embed job's load stage gives a row of some bytes."""
    governance = Governance(tmp_path / "governance", GovernanceSettings())
    load = LoadItems("acme", 10**7, governance)
    base = {"source": "x", "path": "", "subject": "", "tenant": "", "meta": "{}"}

    def row_hash(data: bytes) -> str:
        return load(pa.Table.from_pylist([{**base, "image": data}], schema=ITEM_SCHEMA)).to_pylist()[0]["content_hash"]

    yield partial(keyed_content_hash, governance.identity_key("acme")), row_hash
    governance.close()


def test_thumbnailer_caches_by_content_hash_and_side(tmp_path, acme):
    keyed, row_hash = acme
    path = tmp_path / "a.png"
    path.write_bytes(_png())
    thumbs = Thumbnailer(DecodeLimits())
    first = thumbs.draw(str(path), row_hash(_png()), 64, keyed)
    path.unlink()  # served from the cache from now on
    assert thumbs.draw(str(path), row_hash(_png()), 64, keyed) == first and thumbs.cache.hits == 1
    with pytest.raises(SourceUnavailable):
        thumbs.draw(str(path), row_hash(_png()), 32, keyed)  # another side is another entry


def test_a_draw_reports_the_bytes_it_decoded_and_a_cache_hit_nothing(tmp_path, acme):
    keyed, row_hash = acme
    path = tmp_path / "a.png"
    path.write_bytes(_png())
    thumbs, drawn = Thumbnailer(DecodeLimits()), []
    thumbs.draw(str(path), row_hash(_png()), 64, keyed, drawn.append)
    thumbs.draw(str(path), row_hash(_png()), 64, keyed, drawn.append)  # cached: no work, no charge
    thumbs.draw(str(path), row_hash(_png()), 128, keyed, drawn.append)
    assert drawn == [len(_png()), len(_png())]


def test_thumbnail_sides_round_up_to_the_ladder():
    assert [ladder_side(s) for s in (16, 64, 65, 200, 256, 257, 1000, 1024)] == [64, 64, 128, 256, 256, 512, 1024, 1024]
    for bad in (15, 1025, 0):
        with pytest.raises(ValueError):
            ladder_side(bad)


def test_thumbnail_is_drawn_only_from_the_rows_own_bytes(tmp_path, acme):
    """A row's source may name any file the server can read (a manifest wrote it): only bytes
    with the row's keyed content hash are drawn."""
    keyed, row_hash = acme
    mine, theirs = tmp_path / "mine.png", tmp_path / "theirs.png"
    mine.write_bytes(_png(colour=(200, 30, 30)))
    theirs.write_bytes(_png(colour=(30, 200, 30)))
    row = row_hash(mine.read_bytes())
    thumbs = Thumbnailer(DecodeLimits())
    assert Image.open(io.BytesIO(thumbs.draw(str(mine), row, 64, keyed))).size == (64, 32)
    with pytest.raises(SourceUnavailable) as pointed:
        thumbs.draw(str(theirs), row, 128, keyed)  # the row points at another file
    mine.write_bytes(theirs.read_bytes())
    with pytest.raises(SourceUnavailable) as swapped:
        thumbs.draw(str(mine), row, 128, keyed)  # the file was replaced since it was embedded
    assert str(pointed.value) == str(swapped.value) == NO_SOURCE
    with pytest.raises(SourceUnavailable):  # another tenant's key gives another hash of the same bytes
        thumbs.draw(str(theirs), row_hash(theirs.read_bytes()), 128, partial(keyed_content_hash, b"globex"))


def test_thumbnail_errors_say_nothing_about_what_is_at_a_path(tmp_path, acme):
    keyed, row_hash = acme
    (tmp_path / "dir").mkdir()
    (tmp_path / "big.png").write_bytes(os.urandom(30_000))  # over the cap
    (tmp_path / "other.png").write_bytes(_png(colour=(1, 2, 3)))
    os.mkfifo(tmp_path / "pipe.png")
    row = row_hash(_png())  # the row's own image exists nowhere below
    sources = [tmp_path / "gone.png", tmp_path / "dir", tmp_path / "big.png", tmp_path / "other.png",
               tmp_path / "pipe.png", "/dev/zero", "/proc/self/environ", "/etc/hostname/x", "content:abc",
               f"{tmp_path / 'other.tar'}#k", "s3://bucket/a.png?endpoint_override=127.0.0.1:9"]
    thumbs = Thumbnailer(DecodeLimits(max_bytes=20_000))
    messages = set()
    for source in sources:
        with pytest.raises(SourceUnavailable) as e:
            thumbs.draw(str(source), row, 64, keyed)
        messages.add(str(e.value))
    assert messages == {NO_SOURCE}


def test_reader_refuses_devices_and_fifos_unread_and_caps_what_claims_no_size(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")  # opening it for a plain read would wait for a writer forever
    reader = SourceReader(max_bytes=64)
    for path in ("/dev/zero", str(tmp_path / "pipe.png"), str(tmp_path)):
        with pytest.raises(SourceUnavailable, match="not a regular file"):
            reader.read(path)
    with pytest.raises(SourceTooLarge, match="too_large"):
        reader.read("/proc/self/status")  # a regular file that claims 0 bytes


def test_capped_read_of_dev_zero_stops_one_byte_past_the_cap():
    class Counting:
        def __init__(self, f):
            self.f, self.read_bytes = f, 0

        def read(self, n):
            chunk = self.f.read(n)
            self.read_bytes += len(chunk)
            return chunk

    with open("/dev/zero", "rb", buffering=0) as zero:
        counting = Counting(zero)
        with pytest.raises(SourceTooLarge, match="too_large"):
            read_capped(counting, 3_000_000)
    assert counting.read_bytes == 3_000_001
    assert read_capped(io.BytesIO(b"x" * 10), 10) == b"x" * 10


def test_object_store_uris_carry_no_connection_options():
    reader = SourceReader(max_bytes=1000)
    for uri in ("s3://bucket/a.png?endpoint_override=127.0.0.1:9&scheme=http", "gs://bucket/a.png?scheme=http",
                "s3://bucket/a.png?", "s3://AKIA:secret@bucket/a.png", "hdfs://host:8020/a.png?user=root"):
        with pytest.raises(SourceRefused, match="refused: .* carry no query string or credentials"):
            reader.read(uri)
    assert reader._filesystems == {}  # nothing was configured from them, so nothing later reuses it
    # A filesystem is built from, and cached under, exactly scheme://authority.
    assert split_location("s3://bucket/dir/a.png") == ("s3", "bucket", "bucket/dir/a.png")
    with pytest.raises(SourceUnavailable):
        reader.read("mock://x/a.png")
    assert list(reader._filesystems) == ["mock://x"]
    # Local paths may hold any character: only URIs with a scheme are object stores.
    assert split_location("/data/a?b@c.png") == ("", "", "/data/a?b@c.png")
    assert split_location("/data/x://y.png") == ("", "", "/data/x://y.png")
    assert split_location("file:///data/a?b.png") == ("", "", "/data/a?b.png")


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
