"""Live ingest (:mod:`pixlake.platform.ingest`) on real milvus-lite with encryption: the same
row id as the embed job, exists on a repeat, an erased subject refused, a denial during the
write taken back, metadata checked."""

from __future__ import annotations

import numpy as np
import pytest

from pixlake.platform import records as R
from pixlake.platform.collection import open_collection
from pixlake.platform.governance.keys import load_master_key
from pixlake.platform.ingest import CREATED, EXISTS, IngestRefused, LiveIngest, check_meta, describe_item
from pixlake.platform.settings import load_settings

DIM, MODEL = 16, "planted:0000000000000000"


@pytest.fixture
def opened(tmp_path):
    load_master_key(tmp_path / "keys", create=True)
    settings = load_settings(overrides={"store": {"db": str(tmp_path / "l.db"), "collection": "live"},
                                        "governance": {"key_dir": str(tmp_path / "keys")}})
    with open_collection(settings) as c:
        c.store.ensure_collection(DIM, MODEL)
        yield c


def _vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _upload(ingest: LiveIngest, data: bytes, subject=None, meta=None, tenant="acme", seed=0):
    u = ingest.identify(tenant, subject, data, meta)
    u.vector = _vector(seed)
    return u


def test_the_row_id_is_the_embed_jobs_and_a_repeat_exists(opened):
    ingest = LiveIngest(opened.store, opened.governance)
    u = _upload(ingest, b"image-bytes", subject="alice", meta={"label": "cat"})
    crypto = opened.governance.tenant_crypto("acme", vectors=False)
    pseudonym, digest = crypto.identify("alice", b"image-bytes")  # the load stage's derivation
    assert u.id == R.row_id("acme", pseudonym, digest) and u.source == f"content:{digest}"
    assert ingest.check(u, MODEL) is None
    assert ingest.write([u], MODEL) == [CREATED]
    again = _upload(ingest, b"image-bytes", subject="alice")
    assert again.id == u.id and ingest.check(again, MODEL) == EXISTS and ingest.write([again], MODEL) == [EXISTS]
    assert _upload(ingest, b"image-bytes", subject="bob").id != u.id  # another subject: another row
    assert _upload(ingest, b"image-bytes", tenant="globex").id != u.id
    row = opened.item("acme", u.id)
    assert row is not None and np.allclose(row[R.VECTOR], u.vector, atol=1e-5)
    described = describe_item(row)
    assert described["meta"] == {"label": "cat"} and described["added_at"].endswith("+00:00")
    assert set(described) == {"id", "meta", "added_at"}  # never the vector
    assert opened.store.count() == 1


def test_the_same_image_twice_in_one_write_is_one_row(opened):
    ingest = LiveIngest(opened.store, opened.governance)
    a, b = _upload(ingest, b"same"), _upload(ingest, b"same")
    assert ingest.write([a, b], MODEL) == [CREATED, EXISTS] and opened.store.count() == 1


def test_an_erased_subject_is_refused_and_stays_erased(opened):
    ingest = LiveIngest(opened.store, opened.governance)
    u = _upload(ingest, b"x", subject="alice")
    opened.governance.ledger.deny("acme", u.subject, "erasure-1")
    with pytest.raises(IngestRefused) as refused:
        ingest.check(u, MODEL)
    assert refused.value.code == "erased_subject"
    assert ingest.write([u], MODEL) == ["erased_subject"] and opened.store.count() == 0  # no key, no row


def test_a_denial_while_writing_takes_the_row_back(opened, monkeypatch):
    ingest = LiveIngest(opened.store, opened.governance)
    u = _upload(ingest, b"y", subject="carol")
    insert = opened.store.insert_new

    def insert_then_deny(rows, model):  # the erasure's deny lands between the write and the re-check
        written = insert(rows, model)
        opened.governance.ledger.deny("acme", u.subject, "erasure-2")
        return written

    monkeypatch.setattr(opened.store, "insert_new", insert_then_deny)
    assert ingest.write([u], MODEL) == ["erased_subject"]
    assert opened.store.count() == 0


@pytest.mark.parametrize("meta, problem", [
    ([1], "JSON object"), ({"bad key!": 1}, "meta key"), ({"added_at": "x"}, "set by pixlake"),
    ({"near_duplicate_of": "x"}, "set by pixlake"), ({"k": {"nested": 1}}, "meta['k']"), ({"k": "x" * 1025}, "meta['k']"),
    ({"k": float("nan")}, "meta['k']"), ({f"k{i}": i for i in range(65)}, "at most 64"),
])
def test_bad_metadata_is_refused_naming_the_problem(meta, problem):
    with pytest.raises(IngestRefused) as refused:
        check_meta(meta)
    assert refused.value.code == "invalid_meta" and problem in str(refused.value)


def test_good_metadata_passes():
    assert check_meta({"label": "cat", "n": 3, "w": 0.5, "ok": True, "a-b_c": ""}) == {
        "label": "cat", "n": 3, "w": 0.5, "ok": True, "a-b_c": ""}
    assert check_meta(None) == {}
