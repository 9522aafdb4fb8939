"""The local HNSW index a long-lived searcher keeps over a milvus-lite collection
(pixlake.platform.store.local_index): it only proposes candidates, so answers keep the
store's filter and deletions, an erased row's vector is zeroed in memory, and a filter that
leaves too few candidates falls back to milvus-lite's own search."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pixlake.platform import records as R
from pixlake.platform.errors import StoreError
from pixlake.platform.store import MilvusStore, build_filter
from pixlake.platform.store.local_index import LocalIndex
from tests.platform.test_store_conformance import DIM, MODEL, make_rows


def _exact_top(vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    return list(np.argsort(-(vectors @ query))[:k])


def _unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _rows(x: np.ndarray, tenant: str = "t") -> list[dict]:
    return [{R.ID: f"r{i}", R.TENANT: tenant, R.SOURCE: f"s{i}", R.VECTOR: v} for i, v in enumerate(x)]


def test_the_index_answers_by_exact_cosine_and_a_forgotten_row_leaves_zeros():
    # stored vectors are not unit length (ciphertexts are scaled): the graph works on their
    # directions, the answer on the stored floats themselves
    x = _unit(2000, 32, 0) * np.random.default_rng(9).uniform(50, 60, (2000, 1)).astype(np.float32)
    index = LocalIndex(32, x[:500])
    index.add(_rows(x))
    queries = _unit(30, 32, 1)
    found = index.search(queries, 10)
    cosines = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ queries.T
    recall = np.mean([len({row[R.ID] for row, _, _ in hits} & {f"r{j}" for j in np.argsort(-cosines[:, q])[:10]}) / 10
                      for q, hits in enumerate(found)])
    assert recall >= 0.95
    for q, hits in enumerate(found):
        scores = [s for _, _, s in hits]
        assert scores == sorted(scores, reverse=True)  # best first
        for row, vector, score in hits:
            j = int(row[R.ID][1:])
            assert np.array_equal(vector, x[j])  # the stored float32 vector, bit for bit
            assert score == pytest.approx(float(cosines[j, q]), abs=1e-5)
            assert row[R.SOURCE] == f"s{j}" and R.VECTOR not in row
    odd = index.search(queries[:1], 10, lambda row: int(row[R.ID][1:]) % 2 == 1)[0]
    assert len(odd) == 10 and all(int(row[R.ID][1:]) % 2 == 1 for row, _, _ in odd)
    assert index.search(queries[:1], 5, lambda row: False) == [None]  # nothing passes: ask the store

    index.forget(["r7"])
    assert "r7" not in {row[R.ID] for row, _, _ in index.search(x[7:8], 50)[0]}
    assert len(index) == 1999 and index.positions == 2000
    # the forgotten vector itself is gone from memory, its code too, not only hidden
    vectors, codes = _stored(index)
    assert not vectors[7].any() and not codes[7].any() and vectors[8].any() and codes[8].any()
    index.add([{R.ID: "r8", R.VECTOR: -x[8]}])  # written again: the old vector goes
    vectors, codes = _stored(index)
    assert not vectors[8].any() and not codes[8].any()
    assert index.search(-x[8:9], 1)[0][0][0][R.ID] == "r8"


def _stored(index: LocalIndex) -> tuple[np.ndarray, np.ndarray]:
    """The index's float32 vectors and 8-bit codes as it holds them (copies, by position)."""
    import faiss

    storage = faiss.downcast_index(index._index.storage)
    codes = faiss.rev_swig_ptr(storage.codes.data(), index.positions * storage.code_size)
    return index._vectors[:index.positions].copy(), np.array(codes).reshape(index.positions, -1)


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
    client = lite_store._client
    for name in ("search", "query", "has_collection"):
        real = getattr(client, name)
        monkeypatch.setattr(client, name, lambda *a, _real=real, _name=name, **kw: milvus_calls.append(_name) or _real(*a, **kw))
    fields = (*R.SCALAR_FIELDS, R.VECTOR)
    via_local = lite_store.search(queries, k=10, filter=build_filter("big"), output_fields=fields)
    assert not milvus_calls, "a search with enough candidates called milvus-lite"
    stored = {r[R.ID]: r for r in big}
    for local in via_local:  # every field as milvus-lite stores it, the vector bit for bit
        for hit in local:
            assert {f: hit[f] for f in R.SCALAR_FIELDS} == {f: stored[hit["id"]][f] for f in R.SCALAR_FIELDS}
            assert np.array_equal(hit[R.VECTOR], np.float32(stored[hit["id"]][R.VECTOR]))
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
    vectors, codes = _stored(index)
    assert vectors.any(axis=1).sum() == codes.any(axis=1).sum() == len(rows) - len(erased)  # zeroed in memory
    assert not {r[R.ID] for r in erased} & {r[R.ID] for r in index._rows if r}  # their fields gone too

    new = make_rows(5, seed=6, start=5000)
    lite_store.upsert(new)
    for row in new:
        assert lite_store.search([row[R.VECTOR]], k=1, filter=build_filter("t1"), output_fields=())[0][0]["id"] == row[R.ID]


def test_a_write_while_the_build_reads_is_in_the_index(lite_store, monkeypatch):
    lite_store.upsert(make_rows(600, seed=11))
    late = make_rows(3, seed=12, start=9000)
    real_pages, wrote = lite_store.pages, []

    def pages(*args, **kwargs):
        for page in real_pages(*args, **kwargs):
            yield page
            if not wrote:  # lands after the build took this page, before it publishes
                wrote.append(lite_store.upsert(late))

    monkeypatch.setattr(lite_store, "pages", pages)
    lite_store.keep_local_index(0)
    _wait_ready(lite_store)
    assert wrote == [3] and len(lite_store._local._index) == 603
    for row in late:
        assert lite_store.search([row[R.VECTOR]], k=1, filter=build_filter("t1"), output_fields=())[0][0]["id"] == row[R.ID]


def test_dropping_the_collection_anywhere_in_the_process_stops_its_local_index(lite_store):
    lite_store.upsert(make_rows(300, seed=13))
    lite_store.keep_local_index(0)
    _wait_ready(lite_store)
    other = MilvusStore(lite_store.uri, lite_store.collection)
    try:
        other.drop()
    finally:
        other.close()
    assert not lite_store._local.ready
    with pytest.raises(StoreError, match="does not exist"):
        lite_store.search(_unit(1, DIM, 14), k=3, filter=build_filter("t1"), output_fields=())


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


def test_the_crossover_hint_names_the_move_to_a_server_only_past_it(tmp_path):
    from pixlake.platform.collection import LITE_CROSSOVER_ROWS, crossover_hint
    from pixlake.platform.settings import Settings

    lite = Settings(store={"db": str(tmp_path / "big.db"), "collection": "photos"})
    assert crossover_hint(lite, LITE_CROSSOVER_ROWS - 1) is None
    hint = crossover_hint(lite, LITE_CROSSOVER_ROWS)
    assert hint.startswith(f"pixlake: hint: photos holds {LITE_CROSSOVER_ROWS:,} rows on milvus-lite")
    assert "--db http://HOST:19530" in hint and f"governance.key_dir={tmp_path / 'big.governance'}" in hint
    assert "\n" not in hint  # one line
    server = Settings(store={"db": "http://127.0.0.1:19530", "collection": "photos"}, governance={"key_dir": str(tmp_path)})
    assert crossover_hint(server, 10 * LITE_CROSSOVER_ROWS) is None
