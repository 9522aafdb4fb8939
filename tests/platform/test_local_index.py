"""The local HNSW index a long-lived searcher keeps over a milvus-lite collection
(pixlake.platform.store.local_index): it only proposes candidates, so answers keep the
store's filter and deletions, an erased row's vector is zeroed in memory, and a filter that
leaves too few candidates falls back to milvus-lite's own search."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pixlake.platform import records as R
from pixlake.platform.store import MilvusStore, build_filter
from pixlake.platform.store.local_index import LocalIndex
from tests.platform.test_store_conformance import DIM, MODEL, make_rows


def _exact_top(vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    return list(np.argsort(-(vectors @ query))[:k])


def _unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_index_finds_the_nearest_and_a_forgotten_row_leaves_zeros():
    x = _unit(2000, 32, 0)
    ids = [f"r{i}" for i in range(len(x))]
    index = LocalIndex(32)
    index.add(ids, x)
    queries = _unit(30, 32, 1)
    found = index.search(queries, 10)
    recall = np.mean([len({i for i, _ in hits} & {ids[j] for j in _exact_top(x, q, 10)}) / 10
                      for q, hits in zip(queries, found)])
    assert recall >= 0.95
    assert all(hits[0][1] >= hits[-1][1] for hits in found)  # best first
    index.forget(["r7"])
    assert "r7" not in {i for i, _ in index.search(x[7:8], 50)[0]}
    assert len(index) == 1999 and index.positions == 2000
    # the forgotten vector itself is gone from memory, not only hidden
    assert not _stored(index)[7].any() and _stored(index)[8].any()
    index.add(["r8"], -x[8:9])  # a row written again: its old vector is replaced
    assert not _stored(index)[8].any()
    assert index.search(-x[8:9], 1)[0][0][0] == "r8"


def _stored(index: LocalIndex) -> np.ndarray:
    """The index's vectors as it holds them (read afresh: an addition may move them)."""
    import faiss

    flat = faiss.rev_swig_ptr(faiss.downcast_index(index._index.storage).get_xb(), index.positions * index.dim)
    return np.array(flat).reshape(index.positions, index.dim)


@pytest.fixture
def lite_store(tmp_path):
    store = MilvusStore(str(tmp_path / "l.db"), "images")
    store.ensure_collection(DIM, MODEL)
    yield store
    store.close()


def _wait_ready(store: MilvusStore) -> None:
    deadline = time.monotonic() + 60
    while not store._local.ready:
        assert time.monotonic() < deadline, "the local index was not built within 60 s"
        time.sleep(0.05)


def test_a_lite_store_searches_through_its_local_index_within_the_filter(lite_store, monkeypatch):
    big, small = make_rows(3000, seed=2, tenant="big"), make_rows(3, seed=3, tenant="small")
    for start in range(0, len(big), 1000):
        lite_store.upsert(big[start:start + 1000])
    lite_store.upsert(small)
    vectors = np.array([r[R.VECTOR] for r in big], np.float32)
    queries = _unit(20, DIM, 4)
    via_milvus = lite_store.search(queries, k=10, filter=build_filter("big"), output_fields=(R.SOURCE,))

    lite_store.keep_local_index(0)
    _wait_ready(lite_store)
    milvus_calls = []
    real = lite_store._milvus_search
    monkeypatch.setattr(lite_store, "_milvus_search", lambda *a, **kw: milvus_calls.append(a) or real(*a, **kw))
    via_local = lite_store.search(queries, k=10, filter=build_filter("big"), output_fields=(R.SOURCE,))
    assert not milvus_calls, "a search with enough candidates went to milvus-lite"
    for q, local, milvus in zip(queries, via_local, via_milvus):
        exact = {big[j][R.ID] for j in _exact_top(vectors, q, 10)}
        assert len({h["id"] for h in local} & exact) >= 9  # as good as the exact answer, near enough
        assert len({h["id"] for h in local} & {h["id"] for h in milvus}) >= 8
        assert all(h["source"].startswith("/data/big/") for h in local)  # the filter holds
        assert [h["score"] for h in local] == sorted((h["score"] for h in local), reverse=True)

    # a tenant with 3 rows among 3,003: too few candidates pass its filter, milvus-lite answers
    few = lite_store.search(queries[:1], k=10, filter=build_filter("small"), output_fields=(R.SOURCE,))[0]
    assert sorted(h["id"] for h in few) == sorted(r[R.ID] for r in small) and milvus_calls


def test_deleted_rows_never_come_back_and_written_rows_are_found(lite_store):
    rows = make_rows(1200, seed=5)
    lite_store.upsert(rows)
    lite_store.keep_local_index(0)
    _wait_ready(lite_store)
    subject = rows[0][R.SUBJECT]
    erased = [r for r in rows if r[R.SUBJECT] == subject]
    other = MilvusStore(lite_store.uri, lite_store.collection)  # an erasure deletes through its own store
    try:
        assert other.delete(filter=build_filter("t1", subject=subject)) == len(erased) > 0
    finally:
        other.close()
    queries = np.array([r[R.VECTOR] for r in erased[:20]], np.float32)
    for hits in lite_store.search(queries, k=5, filter=build_filter("t1"), output_fields=(R.SUBJECT,)):
        assert hits and all(h[R.SUBJECT] != subject for h in hits)
    index = lite_store._local._index
    assert all(i not in index._where for i in (r[R.ID] for r in erased))
    held = _stored(index)
    assert held.any(axis=1).sum() == len(rows) - len(erased)  # their vectors zeroed in memory

    new = make_rows(5, seed=6, start=5000)
    lite_store.upsert(new)
    for row in new:
        assert lite_store.search([row[R.VECTOR]], k=1, filter=build_filter("t1"), output_fields=())[0][0]["id"] == row[R.ID]


@pytest.mark.parametrize("tenant, meta, subject", [
    ("t1", None, None),
    ("t1", {"colour": "red"}, None),
    ("t1", {"colour": ["red", "blue"], "even": True}, None),
    ("t1", {"n": 3}, None),
    ("t1", {"n": 3.0}, None),
    ("t1", {"even": 1}, None),  # milvus-lite: true equals 1
    ("t1", {"n": True}, None),
    ("t1", {"n": "3"}, None),  # a string is not a number
    ("t1", {"missing": "x"}, None),
    ("t2", None, None),
    (None, {"caption": "picture 5"}, None),
    ("t1", None, "SUBJECT0"),
])
def test_a_filter_decides_in_python_as_milvus_does(lite_store, tenant, meta, subject):
    rows = make_rows(24, seed=7) + make_rows(6, seed=8, tenant="t2")
    lite_store.upsert(rows)
    subject = rows[0][R.SUBJECT] if subject == "SUBJECT0" else subject
    built = build_filter(tenant, meta, subject)
    by_milvus = {r[R.ID] for r in lite_store.query(built, [R.ID])}
    by_python = {r[R.ID] for r in rows if built.matches(r)}
    assert by_python == by_milvus
