"""The load stage as a plain callable on pyarrow batches (no Ray): the job's tenant decides
every row's tenant, and no source makes it read past the byte cap."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pyarrow as pa
import pytest
from PIL import Image

from pixlake.platform.governance.cipher import keyed_content_hash
from pixlake.platform.governance.service import Governance
from pixlake.platform.images import content_hash
from pixlake.platform.pipeline.load import LoadItems
from pixlake.platform.pipeline.rows import OK, REJECTED
from pixlake.platform.sources.items import ITEM_SCHEMA, ParquetRows, WebDatasetSamples, resolve_source
from pixlake.platform.settings import GovernanceSettings


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def _items(*items: dict) -> pa.Table:
    base = {"source": "", "path": "", "image": b"", "subject": "", "tenant": "", "meta": "{}"}
    return pa.Table.from_pylist([{**base, **item} for item in items], schema=ITEM_SCHEMA)


@pytest.fixture
def governance(tmp_path):
    governance = Governance(tmp_path / "governance", GovernanceSettings())
    yield governance
    governance.close()


def test_a_manifest_naming_another_tenant_is_a_rejected_row(governance):
    png = _png()
    batch = _items({"source": "a", "image": png}, {"source": "b", "image": png, "tenant": "acme"},
                   {"source": "c", "image": png, "tenant": "globex"})
    out = LoadItems("acme", 10_000, governance)(batch).to_pylist()
    assert [(r["status"], r["tenant"]) for r in out] == [(OK, "acme"), (OK, "acme"), (REJECTED, "acme")]
    assert out[2]["reason"].startswith("tenant_mismatch: manifest names tenant 'globex', job runs as 'acme'")
    assert out[2]["id"] == out[2]["content_hash"] == "" and out[2]["image"] == b""  # nothing of it goes on
    # The row's content hash is the shared keyed hash the thumbnail check recomputes.
    assert out[0]["content_hash"] == keyed_content_hash(governance.identity_key("acme"), content_hash(png))

    allowed = LoadItems("acme", 10_000, governance, allow_manifest_tenants=True)(batch).to_pylist()
    assert [(r["status"], r["tenant"]) for r in allowed] == [(OK, "acme"), (OK, "acme"), (OK, "globex")]


def test_parquet_and_webdataset_manifests_naming_another_tenant_are_rejected(governance, tmp_path):
    """The read stage's mappers in front of the load stage, as the job chains them."""
    png = _png()
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        info = tarfile.TarInfo("k.png")
        info.size = len(png)
        tar.addfile(info, io.BytesIO(png))
    samples = pa.table({"__key__": ["a", "b"], "__url__": [str(shard)] * 2, "png": [png, png],
                        "json": [json.dumps({"tenant": "globex"}).encode(), json.dumps({"tenant": "acme"}).encode()]})
    rows = pa.table({"image": [png, png], "tenant": ["globex", None]})
    load = LoadItems("acme", 10_000, governance)
    for items in (WebDatasetSamples(resolve_source(str(shard)))(samples), ParquetRows(None, str(tmp_path))(rows)):
        out = load(items).to_pylist()
        assert [r["status"] for r in out] == [REJECTED, OK] and out[0]["reason"].startswith("tenant_mismatch:")


def test_sources_that_never_end_are_rejected_rows_not_out_of_memory(governance, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opened without a writer: a plain read would wait forever
    batch = _items({"source": "zero", "path": "/dev/zero"}, {"source": "fifo", "path": str(fifo)},
                   {"source": "proc", "path": "/proc/self/status"},  # claims 0 bytes, holds more than 64
                   {"source": "s3", "path": "s3://bucket/a.png?endpoint_override=127.0.0.1:9&scheme=http"})
    out = LoadItems("acme", 64, governance)(batch).to_pylist()
    reasons = {r["source"]: r["reason"] for r in out}
    assert all(r["status"] == REJECTED for r in out)
    assert reasons["zero"].startswith("unreadable: not a regular file")
    assert reasons["fifo"].startswith("unreadable: not a regular file")
    assert reasons["proc"].startswith("too_large:")
    assert reasons["s3"].startswith("refused:")


def test_the_load_stage_asks_once_per_tenant_for_an_identity_only_handle(governance):
    """The stage derives with the handle the governance owner hands out (pickled, as a Ray
    task receives it): no vector key travels to it, and its pseudonyms are the facade's."""
    import pickle

    asked = []

    class Owner:  # the actor proxy's surface: a method call returns a pickled copy
        def tenant_crypto(self, tenant, **parts):
            asked.append((tenant, parts))
            return pickle.loads(pickle.dumps(governance.tenant_crypto(tenant, **parts)))

    png = _png()
    load = LoadItems("acme", 10_000, Owner())
    out = load(_items({"source": "a", "image": png, "subject": "alice"}, {"source": "b", "image": png})).to_pylist()
    out += load(_items({"source": "c", "image": png, "subject": "alice"})).to_pylist()
    assert asked == [("acme", {"vectors": False})]
    assert out[0]["subject"] == out[2]["subject"] == governance.pseudonym("acme", "alice")
    assert out[1]["subject"] == governance.pseudonym("acme", f"item:{out[1]['content_hash']}") != out[0]["subject"]
    assert governance.keys.live_versions("acme") == []  # no vector key was created for it
