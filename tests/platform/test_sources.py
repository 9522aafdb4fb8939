"""Tests for pixlake.platform.sources.items: resolving SOURCEs and mapping rows (no Ray)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pixlake.platform.errors import SourceError
from pixlake.platform.sources.items import (
    ITEM_SCHEMA,
    ParquetRows,
    ResolvedSource,
    WebDatasetSamples,
    resolve_source,
)


def _png(colour=(255, 0, 0), size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _jpg(colour=(0, 0, 255), size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """root/{a.png, b.JPG, fake.jpg (text), notes.txt, meta.json, sub/c.png, sub/deeper/d.webp, sub/e.txt}"""
    root = tmp_path / "tree"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.png").write_bytes(_png())
    (root / "b.JPG").write_bytes(_jpg())
    (root / "fake.jpg").write_text("not really a jpeg")
    (root / "notes.txt").write_text("hello")
    (root / "meta.json").write_text("{}")
    (root / "sub" / "c.png").write_bytes(_png((0, 255, 0)))
    (root / "sub" / "deeper" / "d.webp").write_bytes(b"RIFF....WEBP")
    (root / "sub" / "e.txt").write_text("x")
    return root


def _write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# --- image folders and globs ------------------------------------------------------------


def test_directory_is_recursive_and_keeps_only_image_extensions(image_tree: Path):
    r = resolve_source(str(image_tree))
    assert isinstance(r, ResolvedSource)
    assert r.kind == "images"
    assert r.prefix == ""
    assert r.files == sorted(
        str(image_tree / p) for p in ("a.png", "b.JPG", "fake.jpg", "sub/c.png", "sub/deeper/d.webp")
    )
    # a text file with an image name is included; decoding rejects it later, as a row
    assert str(image_tree / "fake.jpg") in r.files
    assert not any(f.endswith((".txt", ".json")) for f in r.files)
    assert r.uri(r.files[0]) == r.files[0]


def test_relative_directory_becomes_absolute(image_tree: Path, monkeypatch):
    monkeypatch.chdir(image_tree.parent)
    r = resolve_source(image_tree.name)
    assert all(Path(f).is_absolute() for f in r.files)
    assert str(image_tree / "a.png") in r.files


def test_single_image_file(image_tree: Path):
    r = resolve_source(str(image_tree / "a.png"))
    assert (r.kind, r.files) == ("images", [str(image_tree / "a.png")])


def test_glob_pattern(image_tree: Path):
    r = resolve_source(str(image_tree / "*.png"))
    assert r.kind == "images"
    assert str(image_tree / "a.png") in r.files
    assert str(image_tree / "b.JPG") not in r.files
    assert str(image_tree / "fake.jpg") not in r.files


def test_glob_pattern_with_character_class(image_tree: Path):
    r = resolve_source(str(image_tree / "[ab].*"))
    assert str(image_tree / "a.png") in r.files
    assert str(image_tree / "b.JPG") in r.files
    assert str(image_tree / "fake.jpg") not in r.files


def test_glob_over_subdirectories(image_tree: Path):
    r = resolve_source(str(image_tree / "sub" / "*" / "*.webp"))
    assert r.files == [str(image_tree / "sub" / "deeper" / "d.webp")]


def test_star_does_not_cross_directories(image_tree: Path):
    r = resolve_source(str(image_tree / "*.png"))
    assert r.files == [str(image_tree / "a.png")]


def test_file_uri_of_directory_keeps_plain_paths(image_tree: Path):
    r = resolve_source(image_tree.as_uri())
    assert r.kind == "images"
    assert r.prefix == ""  # file:// sources show plain paths
    assert r.files == resolve_source(str(image_tree)).files
    f = str(image_tree / "a.png")
    assert r.uri(f) == f
    assert not r.uri(f).startswith("file:")


def test_file_uri_glob(image_tree: Path):
    r = resolve_source(image_tree.as_uri() + "/sub/*/*.webp")
    assert r.files == [str(image_tree / "sub" / "deeper" / "d.webp")]
    assert r.prefix == ""


def test_resolved_source_uri_prefix():
    r = ResolvedSource("images", None, ["bucket/a.png"], "s3://")
    assert r.uri("bucket/a.png") == "s3://bucket/a.png"


# --- Parquet and WebDataset -------------------------------------------------------------


def test_single_parquet_file(tmp_path: Path):
    path = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"path": ["a.png"]}), path)
    r = resolve_source(str(path))
    assert (r.kind, r.files) == ("parquet", [str(path)])


def test_directory_of_parquet_files(tmp_path: Path):
    d = tmp_path / "ds"
    (d / "part=1").mkdir(parents=True)
    pq.write_table(pa.table({"path": ["a.png"]}), d / "p0.parquet")
    pq.write_table(pa.table({"path": ["b.png"]}), d / "part=1" / "p1.PARQUET")
    r = resolve_source(str(d))
    assert r.kind == "parquet"
    assert r.files == sorted([str(d / "p0.parquet"), str(d / "part=1" / "p1.PARQUET")])


def test_parquet_dataset_with_spark_side_files(tmp_path: Path):
    d = tmp_path / "spark"
    d.mkdir()
    pq.write_table(pa.table({"path": ["a.png"]}), d / "part-00000.parquet")
    (d / "_SUCCESS").write_bytes(b"")
    (d / ".part-00000.parquet.crc").write_bytes(b"crc")
    r = resolve_source(str(d))
    assert (r.kind, r.files) == ("parquet", [str(d / "part-00000.parquet")])


def test_tar_shard_is_webdataset(tmp_path: Path):
    shard = _write_tar(tmp_path / "shard-000.tar", {"k1.jpg": _jpg(), "k1.json": b"{}"})
    r = resolve_source(str(shard))
    assert (r.kind, r.files) == ("webdataset", [str(shard)])


def test_directory_of_tar_shards_and_glob(tmp_path: Path):
    d = tmp_path / "shards"
    d.mkdir()
    for i in range(3):
        _write_tar(d / f"shard-{i:03d}.tar", {f"k{i}.png": _png()})
    r = resolve_source(str(d))
    assert r.kind == "webdataset" and len(r.files) == 3
    r = resolve_source(str(d / "shard-00[01].tar"))
    assert r.kind == "webdataset"
    assert r.files == [str(d / "shard-000.tar"), str(d / "shard-001.tar")]


def test_mixed_kinds_rejected(tmp_path: Path):
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "a.png").write_bytes(_png())
    pq.write_table(pa.table({"path": ["a.png"]}), d / "manifest.parquet")
    with pytest.raises(SourceError):
        resolve_source(str(d))


def test_parquet_and_tar_mixed_is_rejected(tmp_path: Path):
    d = tmp_path / "mixed"
    d.mkdir()
    pq.write_table(pa.table({"path": ["a.png"]}), d / "m.parquet")
    _write_tar(d / "s.tar", {"k.png": _png()})
    with pytest.raises(SourceError):
        resolve_source(str(d))


# --- errors ------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path):
    with pytest.raises(SourceError, match="not found"):
        resolve_source(str(tmp_path / "nope"))


def test_missing_file_uri(tmp_path: Path):
    with pytest.raises(SourceError):
        resolve_source((tmp_path / "nope").as_uri())


def test_empty_directory(tmp_path: Path):
    d = tmp_path / "empty"
    (d / "only" / "subdirs").mkdir(parents=True)
    with pytest.raises(SourceError, match="empty"):
        resolve_source(str(d))


def test_glob_matching_nothing(image_tree: Path):
    with pytest.raises(SourceError, match="matches no files"):
        resolve_source(str(image_tree / "*.gif"))


def test_glob_under_missing_directory(tmp_path: Path):
    with pytest.raises(SourceError):
        resolve_source(str(tmp_path / "nope" / "*.png"))


def test_directory_of_text_files_only(tmp_path: Path):
    d = tmp_path / "texts"
    d.mkdir()
    (d / "a.txt").write_text("a")
    (d / "b.json").write_text("{}")
    with pytest.raises(SourceError, match="no images"):
        resolve_source(str(d))


def test_single_non_image_file(tmp_path: Path):
    f = tmp_path / "a.txt"
    f.write_text("a")
    with pytest.raises(SourceError):
        resolve_source(str(f))


def test_object_store_source_with_connection_options_is_refused():
    for source in ("s3://bucket/images?endpoint_override=127.0.0.1:9&scheme=http", "s3://key:secret@bucket/images",
                   "gs://bucket/*.png?endpoint_override=evil"):
        with pytest.raises(SourceError, match="refused: .* carry no query string or credentials"):
            resolve_source(source)


def test_source_that_is_no_regular_file_is_refused(tmp_path: Path):
    import os

    os.mkfifo(tmp_path / "rows.parquet")  # a reader would wait on it forever
    with pytest.raises(SourceError, match="not a regular file"):
        resolve_source(str(tmp_path / "rows.parquet"))


def test_unknown_uri_scheme():
    with pytest.raises(SourceError):
        resolve_source("nosuchscheme://bucket/images")


# --- ParquetRows -------------------------------------------------------------------------


def test_parquet_rows_mapping(tmp_path: Path):
    manifest = tmp_path / "data" / "manifest.parquet"
    manifest.parent.mkdir()
    inline = _png((1, 2, 3))
    table = pa.table(
        {
            "path": ["img/a.png", "/abs/b.png", None, "s3://bucket/c.jpg", "d.png"],
            "image": [None, None, inline, None, None],
            "subject": ["alice", None, "bob", "", "carol"],
            "tenant": ["t1", None, "t2", "t1", ""],
            "source": [None, None, None, None, "catalog:42"],
            "caption": ["a cat", "a dog", None, "x", "y"],
            "n": [1, 2, 3, 4, 5],
            "score": [0.5, 1.5, 2.5, 3.5, 4.5],
            "flag": [True, False, True, False, True],
            "thumb": [b"\x00", b"\x01", b"\x02", b"\x03", b"\x04"],  # bytes never go to meta
        }
    )
    pq.write_table(table, manifest)
    resolved = resolve_source(str(manifest))
    out = ParquetRows(resolved, str(manifest.parent))(pq.read_table(manifest))

    assert out.schema == ITEM_SCHEMA
    rows = out.to_pylist()
    assert len(rows) == 5
    base = str(manifest.parent)

    a, b, c, d, e = rows
    # relative path -> relative to the manifest's directory
    assert a["path"] == f"{base}/img/a.png"
    assert a["source"] == a["path"]
    assert a["image"] == b""
    assert (a["subject"], a["tenant"]) == ("alice", "t1")
    assert json.loads(a["meta"]) == {"caption": "a cat", "n": 1, "score": 0.5, "flag": True}

    # absolute path kept as-is, missing subject/tenant -> ""
    assert (b["path"], b["source"]) == ("/abs/b.png", "/abs/b.png")
    assert (b["subject"], b["tenant"]) == ("", "")

    # inline bytes: no path, bytes carried through, source left for load to fill
    assert c["image"] == inline
    assert c["path"] == ""
    assert c["source"] == ""
    assert (c["subject"], c["tenant"]) == ("bob", "t2")
    assert json.loads(c["meta"])["caption"] is None

    # a URI is never joined with the base directory
    assert d["path"] == "s3://bucket/c.jpg"

    # an explicit source column wins for the user-facing source
    assert e["source"] == "catalog:42"
    assert e["path"] == f"{base}/d.png"

    for r in rows:
        meta = json.loads(r["meta"])
        assert set(meta) == {"caption", "n", "score", "flag"}  # no image/path/subject/tenant/source/thumb
        assert r["meta"] == json.dumps(meta, sort_keys=True)


def test_parquet_rows_skip_dunder_columns_and_handle_dates(tmp_path: Path):
    import datetime

    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({"path": ["a.png"], "__index_level_0__": [7], "taken": [datetime.date(2024, 5, 6)]}), manifest
    )
    resolved = resolve_source(str(manifest))
    (row,) = ParquetRows(resolved, str(tmp_path))(pq.read_table(manifest)).to_pylist()
    assert json.loads(row["meta"]) == {"taken": "2024-05-06"}


def test_parquet_rows_use_source_prefix_for_remote_manifests():
    resolved = ResolvedSource("parquet", None, ["bucket/dir/m.parquet"], "s3://")
    table = pa.table({"path": ["img/a.png"]})
    (row,) = ParquetRows(resolved, "bucket/dir")(table).to_pylist()
    assert row["path"] == "s3://bucket/dir/img/a.png"
    assert row["source"] == "s3://bucket/dir/img/a.png"


def test_parquet_rows_empty_batch(tmp_path: Path):
    resolved = ResolvedSource("parquet", None, ["/x/m.parquet"], "")
    out = ParquetRows(resolved, "/x")(pa.table({"path": pa.array([], pa.string())}))
    assert out.num_rows == 0
    assert out.schema == ITEM_SCHEMA


# --- WebDatasetSamples -------------------------------------------------------------------


def test_webdataset_samples_mapping(tmp_path: Path):
    shard = _write_tar(tmp_path / "shard-000.tar", {"k.png": _png()})
    resolved = resolve_source(str(shard))
    jpg, png = _jpg(), _png()
    # the shape read_webdataset(decoder=None) yields: member suffixes as columns, bytes or None
    table = pa.table(
        {
            "__key__": ["s1", "s2", "s3", "s4"],
            "__url__": [str(shard)] * 4,
            "jpg": [jpg, None, None, None],
            "png": [None, png, png, None],
            "json": [
                json.dumps({"label": "cat", "subject": "alice", "tenant": "t1", "n": 3}).encode(),
                json.dumps([1, 2]).encode(),
                b"{not json",
                None,
            ],
            "txt": [b"a caption", None, "caf\u00e9".encode(), b"only text"],
        },
        schema=pa.schema(
            [
                ("__key__", pa.string()),
                ("__url__", pa.string()),
                ("jpg", pa.binary()),
                ("png", pa.binary()),
                ("json", pa.binary()),
                ("txt", pa.binary()),
            ]
        ),
    )
    out = WebDatasetSamples(resolved)(table)
    assert out.schema == ITEM_SCHEMA
    s1, s2, s3, s4 = out.to_pylist()

    assert s1["image"] == jpg
    assert s1["source"] == f"{shard}#s1"
    assert s1["path"] == ""
    assert (s1["subject"], s1["tenant"]) == ("alice", "t1")  # lifted out of the json
    assert json.loads(s1["meta"]) == {"label": "cat", "n": 3, "txt": "a caption"}

    assert s2["image"] == png
    assert s2["source"] == f"{shard}#s2"
    assert json.loads(s2["meta"]) == {"json": [1, 2]}  # a non-object json is kept under "json"
    assert (s2["subject"], s2["tenant"]) == ("", "")

    assert s3["image"] == png
    assert json.loads(s3["meta"]) == {"txt": "caf\u00e9"}  # unparsable json dropped, txt kept

    assert s4["image"] == b""  # no image member: load rejects it later
    assert s4["source"] == f"{shard}#s4"
    assert json.loads(s4["meta"]) == {"txt": "only text"}


def test_webdataset_samples_other_image_suffixes_and_cls(tmp_path: Path):
    resolved = ResolvedSource("webdataset", None, ["bucket/s.tar"], "s3://")
    table = pa.table(
        {
            "__key__": ["x"],
            "__url__": ["bucket/s.tar"],
            "webp": [b"RIFFwebp"],
            "cls": [b"7"],
        }
    )
    (row,) = WebDatasetSamples(resolved)(table).to_pylist()
    assert row["image"] == b"RIFFwebp"
    assert row["source"] == "s3://bucket/s.tar#x"
    assert json.loads(row["meta"]) == {"cls": "7"}
