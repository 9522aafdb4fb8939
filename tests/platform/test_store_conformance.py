"""Conformance suite for the store interface (pixlake.platform.store.MilvusStore; the
interface is listed in the docstring of pixlake/platform/store/client.py).

Every test in :class:`TestStoreConformance` runs once per backend in :data:`BACKENDS`:
milvus-lite (a ``.db`` file under ``tmp_path``) and a real Milvus server (the embedded
server of the ``milvus`` package, one uniquely named collection per test, IVF_PQ built
from an index plan).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable, Optional

import grpc
import numpy as np
import pytest
from pymilvus.exceptions import MilvusException

from pixlake.platform import records as R
from pixlake.platform.errors import ConfigError, StoreError
from pixlake.platform.images import content_hash
from pixlake.platform.index_plan import IndexPlan
from pixlake.platform.settings import StoreSettings
from pixlake.platform.store.index import planned_index
from pixlake.platform.store import (
    LITE,
    SERVER,
    MilvusStore,
    backend_of,
    build_filter,
    check_db_location,
    choose_index,
    transient,
)

DIM = 16
MODEL = "pixlake-tiny:0123456789abcdef"
OTHER_MODEL = "pixlake-tiny:fedcba9876543210"
REPO_ROOT = Path(__file__).resolve().parents[2]
# A child process that opens the store and prints its row count. It waits at most 3 s for
# a lock (not the store's default 30 s) so a lock that is never released fails quickly.
CHILD_COUNT = (
    "import pixlake.platform.store as S, pixlake.platform.store.backends as B; B.LOCK_WAIT_S = 3.0; "
    "s = S.MilvusStore({uri!r}, {collection!r}); print(s.count()); s.close()"
)


# --- backends ----------------------------------------------------------------------------


class Backend:
    """How a conformance test gets at one kind of store."""

    name: str
    kind: str  # LITE or SERVER, what backend_of() must say
    index_type: str  # the index the backend must really build

    def open(self) -> MilvusStore:
        raise NotImplementedError

    def cleanup(self) -> None:
        pass


class LiteBackend(Backend):
    name, kind, index_type = "milvus-lite", LITE, "HNSW"

    def __init__(self, tmp_path: Path):
        self.uri = str(tmp_path / "s.db")
        self.collection = "images"

    def open(self) -> MilvusStore:
        return MilvusStore(self.uri, self.collection)


PLAN = {  # a small saved index plan (pixlake plan-index writes these) for 16-d test vectors
    "index_type": "IVF_PQ", "params": {"nlist": 16, "m": 8, "nbits": 8}, "search_params": {"nprobe": 16},
    "rerank_factor": 5, "recall": {"image_to_image": {"pq": 0.9, "reranked": 1.0}}, "bytes_per_vector": 8, "dim": DIM,
    "rows_sampled": 1000, "target": 0.95, "k": 10, "met": True, "candidates": [], "version": 1,
}


class ServerBackend(Backend):
    name, kind, index_type = "milvus-server", SERVER, "IVF_PQ"
    _count = 0

    def __init__(self, uri: str, tmp_path: Path):
        ServerBackend._count += 1
        self.uri = uri
        self.collection = f"conformance_{ServerBackend._count}_{tmp_path.name[-12:].replace('-', '_')}"
        self.plan = tmp_path / "plan.json"
        self.plan.write_text(json.dumps(PLAN))

    def open(self) -> MilvusStore:
        return MilvusStore(self.uri, self.collection, self.plan)

    def cleanup(self) -> None:
        s = self.open()
        try:
            s.drop()
        finally:
            s.close()


BACKENDS: dict[str, type] = {"milvus-lite": LiteBackend, "milvus-server": ServerBackend}


# the server backend starts the session's Milvus server: the slow tier
@pytest.fixture(scope="module", params=[pytest.param(b, marks=pytest.mark.slow) if BACKENDS[b] is ServerBackend else b
                                        for b in sorted(BACKENDS)])
def backend_cls(request) -> Callable[[Path], Backend]:
    if BACKENDS[request.param] is ServerBackend:
        uri = request.getfixturevalue("milvus_server")
        return lambda tmp_path: ServerBackend(uri, tmp_path)
    return BACKENDS[request.param]


@pytest.fixture
def backend(backend_cls, tmp_path: Path):
    b = backend_cls(tmp_path)
    yield b
    b.cleanup()


@pytest.fixture
def open_store(backend: Backend):
    """Open stores on the backend; every one is closed at teardown (the lite file lock)."""
    opened: list[MilvusStore] = []

    def _open() -> MilvusStore:
        s = backend.open()
        opened.append(s)
        return s

    yield _open
    for s in opened:
        try:
            s.close()
        except Exception:
            pass


@pytest.fixture
def store(open_store) -> MilvusStore:
    s = open_store()
    s.ensure_collection(DIM, MODEL)
    return s


# --- records -----------------------------------------------------------------------------


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_rows(
    n: int, seed: int = 0, tenant: str = "t1", model: str = MODEL, start: int = 0, vectors: Optional[np.ndarray] = None
) -> list[dict]:
    """``n`` records with every field of pixlake.platform.records filled in."""
    vectors = unit_vectors(n, seed) if vectors is None else vectors
    colours = ("red", "green", "blue")
    rows = []
    for i in range(n):
        j = start + i
        data = f"image-{tenant}-{j}".encode()
        chash = content_hash(data)
        subj = hashlib.sha256(f"{tenant}/subject-{j % 4}".encode()).hexdigest()[:32]  # a pseudonym's shape
        rows.append(
            {
                R.ID: R.row_id(tenant, subj, chash),
                R.TENANT: tenant,
                R.SUBJECT: subj,
                R.CONTENT_HASH: chash,
                R.SOURCE: f"/data/{tenant}/{j:04d}.png",
                R.MODEL: model,
                R.META: {"colour": colours[j % 3], "n": j, "even": j % 2 == 0, "caption": f"picture {j}"},
                R.NONCE: f"{j:024x}",
                R.KEY_ID: "key-1",
                R.VECTOR: [float(x) for x in vectors[i]],
            }
        )
    assert set(rows[0]) == set(R.SCALAR_FIELDS) | {R.VECTOR}
    return rows


def ids_of(hits: list[dict]) -> list[str]:
    return [h["id"] for h in hits]


@pytest.fixture
def populated(store: MilvusStore):
    """24 rows of tenant t1 and 12 of tenant t2."""
    t1 = make_rows(24, seed=1, tenant="t1")
    t2 = make_rows(12, seed=2, tenant="t2")
    assert store.upsert(t1) == 24
    assert store.upsert(t2) == 12
    return store, t1, t2


@pytest.fixture(scope="module")
def shared(backend_cls, tmp_path_factory):
    """Like ``populated`` but built once per backend, for tests that only read."""
    b = backend_cls(tmp_path_factory.mktemp("shared"))
    s = b.open()
    try:
        s.ensure_collection(DIM, MODEL)
        t1 = make_rows(24, seed=1, tenant="t1")
        t2 = make_rows(12, seed=2, tenant="t2")
        s.upsert(t1 + t2)
        yield s, t1, t2
    finally:
        s.close()
        b.cleanup()


# --- the suite ---------------------------------------------------------------------------


class TestStoreConformance:
    # collection ---------------------------------------------------------------------------

    def test_backend_kind(self, backend: Backend, open_store):
        s = open_store()
        assert s.backend == backend.kind
        assert backend_of(s.uri) == backend.kind

    def test_ensure_collection_builds_a_real_index(self, backend: Backend, open_store):
        s = open_store()
        assert not s.exists()
        assert s.count() == 0
        assert s.model() is None
        choice = s.ensure_collection(DIM, MODEL)
        assert choice.index_type == backend.index_type
        assert s.exists()
        d = s.describe()
        assert d["index_type"] == backend.index_type
        assert d["backend"] == backend.kind
        assert d["rows"] == 0
        assert d["model"] is None

    def test_ensure_collection_is_reentrant(self, store: MilvusStore):
        store.upsert(make_rows(3))
        assert store.ensure_collection(DIM, MODEL).index_type == store.index.index_type
        assert store.count() == 3

    def test_describe_reports_rows_and_model(self, shared):
        store, t1, t2 = shared
        d = store.describe()
        assert d["rows"] == len(t1) + len(t2)
        assert d["model"] == MODEL
        assert d["collection"] == store.collection

    def test_other_dim_rejected(self, shared):
        store, _, _ = shared
        with pytest.raises(StoreError, match=f"{DIM}-d"):
            store.ensure_collection(DIM * 2, MODEL)

    def test_other_dim_rejected_even_when_empty(self, store: MilvusStore):
        with pytest.raises(StoreError):
            store.ensure_collection(DIM + 1, MODEL)

    def test_other_model_rejected(self, shared):
        store, _, _ = shared
        with pytest.raises(StoreError) as info:
            store.ensure_collection(DIM, OTHER_MODEL)
        assert MODEL in str(info.value) and OTHER_MODEL in str(info.value)

    def test_search_on_missing_collection(self, open_store):
        s = open_store()
        with pytest.raises(StoreError, match="does not exist"):
            s.search(unit_vectors(1, 0), k=3)

    # upsert -------------------------------------------------------------------------------

    def test_upsert_empty(self, store: MilvusStore):
        assert store.upsert([]) == 0
        assert store.count() == 0

    def test_upsert_is_idempotent(self, populated):
        store, t1, t2 = populated
        before = store.count()
        assert store.upsert(t1) == len(t1)
        assert store.upsert(t1 + t2) == len(t1) + len(t2)
        assert store.count() == before == len(t1) + len(t2)

    def test_upsert_replaces_a_changed_row(self, populated):
        store, t1, _ = populated
        target = t1[5]
        new_vec = unit_vectors(1, seed=99)[0]
        changed = dict(target, source="/moved/x.png", meta={"colour": "purple", "n": -1},
                       vector=[float(x) for x in new_vec])
        store.upsert([changed])
        assert store.count() == 36
        assert store.count(build_filter(meta={"colour": "purple"})) == 1
        (hits,) = store.search([new_vec], k=1, output_fields=[R.SOURCE, R.META, R.TENANT])
        assert hits[0]["id"] == target[R.ID]
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert hits[0][R.SOURCE] == "/moved/x.png"
        assert hits[0][R.META] == {"colour": "purple", "n": -1}
        # the old vector no longer finds it first
        (old,) = store.search([target[R.VECTOR]], k=1)
        assert old[0]["id"] != target[R.ID] or old[0]["score"] < 0.999

    def test_pages_see_every_write_made_just_before(self, store: MilvusStore):
        # a rekey pass re-scans right after it (or a writer) wrote: pages must read Strong
        first = make_rows(30, seed=5)
        store.upsert(first)
        assert sorted(r[R.ID] for page in store.pages("", (R.ID,)) for r in page) == sorted(r[R.ID] for r in first)
        changed = [dict(r, nonce="f" * 24) for r in first[:10]] + make_rows(5, seed=6, start=30)
        store.upsert(changed)  # a server's delete + insert of 10 rows, 5 new ones
        seen = {r[R.ID]: r[R.NONCE] for page in store.pages("", (R.ID, R.NONCE), size=7) for r in page}
        assert len(seen) == 35 and sum(n == "f" * 24 for n in seen.values()) == 10

    def test_upsert_rejects_wrong_dim(self, store: MilvusStore):
        bad = make_rows(1)
        bad[0][R.VECTOR] = bad[0][R.VECTOR][:-1]
        with pytest.raises(StoreError):
            store.upsert(bad)
        assert store.count() == 0

    def test_insert_missing_writes_only_new_ids_then_query_and_flush_see_them(self, store: MilvusStore):
        rows = make_rows(10, seed=7)
        assert store.insert_missing(rows[:6] + rows[:2], MODEL) == 6  # repeats in one call count once
        assert store.insert_missing(rows, MODEL) == 4  # the 6 stored are not written again
        store.flush()
        got = store.query(build_filter(tenant="t1"), (R.ID, R.SOURCE))
        assert sorted((r[R.ID], r[R.SOURCE]) for r in got) == sorted((r[R.ID], r[R.SOURCE]) for r in rows)
        assert store.query(build_filter(tenant="t9"), (R.ID,)) == []
        d = store.wait_for_index()
        assert d["rows"] == 10 and d.get("pending_index_rows", 0) == 0
        assert store.retry_count() == 0  # nothing was away

    # search -------------------------------------------------------------------------------

    def test_search_finds_itself_first(self, shared):
        store, t1, t2 = shared
        rows = t1[:3] + t2[:2]
        results = store.search([r[R.VECTOR] for r in rows], k=5)
        assert len(results) == len(rows)
        for row, hits in zip(rows, results):
            assert len(hits) == 5
            assert hits[0]["id"] == row[R.ID]
            assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
            scores = [h["score"] for h in hits]
            assert scores == sorted(scores, reverse=True)
            assert len(set(ids_of(hits))) == 5

    def test_search_output_fields(self, shared):
        store, t1, _ = shared
        (hits,) = store.search([t1[0][R.VECTOR]], k=1, output_fields=list(R.SCALAR_FIELDS))
        hit = hits[0]
        for f in R.SCALAR_FIELDS:
            assert hit[f] == t1[0][f], f

    def test_search_default_output_fields(self, shared):
        store, t1, _ = shared
        (hits,) = store.search([t1[0][R.VECTOR]], k=1)
        assert set(hits[0]) == {"id", "score", R.SOURCE, R.META}
        assert hits[0][R.META] == t1[0][R.META]

    def test_search_k_larger_than_collection(self, store: MilvusStore):
        rows = make_rows(4)
        store.upsert(rows)
        (hits,) = store.search([rows[0][R.VECTOR]], k=50)
        assert sorted(ids_of(hits)) == sorted(r[R.ID] for r in rows)

    # filters ------------------------------------------------------------------------------

    def test_tenant_filter_confines_search(self, shared):
        store, t1, t2 = shared
        f = build_filter(tenant="t2")
        # query with a t1 vector: without the filter it finds the t1 row first
        (hits,) = store.search([t1[0][R.VECTOR]], k=100, filter=f, output_fields=[R.TENANT])
        assert {h[R.TENANT] for h in hits} == {"t2"}
        assert sorted(ids_of(hits)) == sorted(r[R.ID] for r in t2)
        assert t1[0][R.ID] not in ids_of(hits)

    def test_tenant_filter_count(self, shared):
        store, t1, t2 = shared
        assert store.count(build_filter(tenant="t1")) == len(t1)
        assert store.count(build_filter(tenant="t2")) == len(t2)
        assert store.count(build_filter(tenant="t3")) == 0

    def test_count_with_and_without_filter(self, shared):
        store, t1, t2 = shared
        assert store.count() == len(t1) + len(t2)
        assert store.count("") == len(t1) + len(t2)
        assert store.count(f'{R.SOURCE} == "/data/t1/0003.png"') == 1

    def test_meta_equality(self, shared):
        store, t1, t2 = shared
        red_t1 = [r[R.ID] for r in t1 if r[R.META]["colour"] == "red"]
        f = build_filter(tenant="t1", meta={"colour": "red"})
        assert store.count(f) == len(red_t1)
        (hits,) = store.search([t1[0][R.VECTOR]], k=100, filter=f, output_fields=[R.META, R.TENANT])
        assert sorted(ids_of(hits)) == sorted(red_t1)
        assert all(h[R.META]["colour"] == "red" and h[R.TENANT] == "t1" for h in hits)

    def test_meta_number_and_bool(self, shared):
        store, t1, t2 = shared
        assert store.count(build_filter(meta={"n": 3})) == 2  # row 3 of each tenant
        assert store.count(build_filter(tenant="t2", meta={"n": 3})) == 1
        evens = sum(1 for r in t1 + t2 if r[R.META]["even"])
        assert store.count(build_filter(meta={"even": True})) == evens
        assert store.count(build_filter(meta={"even": False})) == len(t1) + len(t2) - evens

    def test_meta_membership(self, shared):
        store, t1, t2 = shared
        want = [r[R.ID] for r in t1 if r[R.META]["colour"] in ("red", "blue")]
        f = build_filter(tenant="t1", meta={"colour": ["red", "blue"]})
        assert store.count(f) == len(want)
        (hits,) = store.search([t1[1][R.VECTOR]], k=100, filter=f)
        assert sorted(ids_of(hits)) == sorted(want)
        assert store.count(build_filter(meta={"n": (0, 1, 2)})) == 6
        assert store.count(build_filter(meta={"colour": ["mauve"]})) == 0
        assert store.count(build_filter(meta={"colour": ['red" or tenant != "', "\\", '"']})) == 0

    def test_meta_missing_key_matches_nothing(self, shared):
        store, _, _ = shared
        assert store.count(build_filter(meta={"no_such_key": "x"})) == 0

    @pytest.mark.parametrize(
        "value",
        [
            't1" or tenant != "',
            't1" || tenant != "x',
            "t1' or tenant != '",
            't1\\" or tenant != \\"',
            "t1\\",
            '"',
            "\\",
            't1") or (1 == 1',
        ],
    )
    def test_injection_is_a_literal(self, shared, value: str):
        store, t1, t2 = shared
        for f in (build_filter(tenant=value), build_filter(meta={"colour": value}), build_filter(tenant="t1", meta={"colour": value})):
            assert store.count(f) == 0
            (hits,) = store.search([t1[0][R.VECTOR]], k=100, filter=f)
            assert hits == []
        # it also never widens a legitimate filter
        assert store.count(build_filter(tenant="t2", meta={"colour": value})) == 0

    @pytest.mark.parametrize("value", ['we"ird\\ten\'ant', 'a\\', '\\"', 'x" or tenant != "', "tab\there", "two\nlines"])
    def test_special_characters_round_trip(self, store: MilvusStore, value: str):
        rows = make_rows(3, tenant="plain")
        odd = make_rows(1, seed=5, tenant=value, start=50)
        odd[0][R.META]["label"] = value
        store.upsert(rows + odd)
        assert store.count(build_filter(tenant=value)) == 1
        assert store.count(build_filter(meta={"label": value})) == 1
        (hits,) = store.search([rows[0][R.VECTOR]], k=10, filter=build_filter(tenant=value), output_fields=[R.TENANT])
        assert ids_of(hits) == [odd[0][R.ID]]
        assert hits[0][R.TENANT] == value

    @pytest.mark.parametrize("value", ["café", "日本", "smile😀"])
    def test_non_ascii_filter_values(self, store: MilvusStore, value: str):
        rows = make_rows(1, tenant=value)
        rows[0][R.META]["label"] = value
        store.upsert(rows + make_rows(2, tenant="plain"))
        assert store.count(build_filter(tenant=value)) == 1
        assert store.count(build_filter(meta={"label": value})) == 1

    # delete -------------------------------------------------------------------------------

    def test_delete_by_ids(self, populated):
        store, t1, t2 = populated
        gone = [r[R.ID] for r in t1[:4]]
        assert store.delete(ids=gone) == 4
        assert store.count() == len(t1) + len(t2) - 4
        assert store.existing_ids(gone, MODEL) == set()
        (hits,) = store.search([t1[0][R.VECTOR]], k=100)
        assert not set(gone) & set(ids_of(hits))

    def test_delete_unknown_ids(self, populated):
        store, t1, t2 = populated
        assert store.delete(ids=["nope", "also-nope"]) == 0
        assert store.delete(ids=[]) == 0
        assert store.count() == len(t1) + len(t2)

    def test_delete_by_filter(self, populated):
        store, t1, t2 = populated
        assert store.delete(filter=build_filter(tenant="t2")) == len(t2)
        assert store.count() == len(t1)
        assert store.count(build_filter(tenant="t2")) == 0
        green_t1 = sum(1 for r in t1 if r[R.META]["colour"] == "green")
        assert store.delete(filter=build_filter(tenant="t1", meta={"colour": "green"})) == green_t1
        assert store.count() == len(t1) - green_t1
        assert store.delete(filter=build_filter(tenant="t2")) == 0

    def test_delete_by_injection_filter_deletes_nothing(self, populated):
        store, t1, t2 = populated
        assert store.delete(filter=build_filter(tenant='t1" or tenant != "')) == 0
        assert store.count() == len(t1) + len(t2)

    def test_delete_needs_exactly_one_selector(self, populated):
        store, t1, t2 = populated
        with pytest.raises(ConfigError):
            store.delete()
        with pytest.raises(ConfigError):
            store.delete(ids=[t1[0][R.ID]], filter=build_filter(tenant="t1"))
        with pytest.raises(ConfigError):
            store.delete(filter="")
        with pytest.raises(ConfigError):
            store.delete(filter=build_filter())
        assert store.count() == len(t1) + len(t2)

    def test_compact_reports_each_collection_and_keeps_what_was_not_deleted(self, populated):
        store, t1, t2 = populated
        other = store.for_collection(f"{store.collection}_other")
        try:
            other.ensure_collection(DIM, MODEL)
            other.upsert(t2)
            store.delete(filter=build_filter(tenant="t2"))
            outcomes = store.compact([store.collection, other.collection])
            assert outcomes == {store.collection: "done", other.collection: "done"}
            assert store.compact() == {store.collection: "done"}  # default: this collection
            assert store.count() == len(t1) and other.count() == len(t2)
            (hits,) = store.search([t1[0][R.VECTOR]], k=1)
            assert ids_of(hits) == [t1[0][R.ID]]
        finally:
            other.drop()
            other.close()

    # the database around the collection ---------------------------------------------------

    def test_other_collections_renames_and_aliases(self, store: MilvusStore):
        rows = make_rows(3, seed=4)
        store.upsert(rows)
        first, renamed, alias = f"{store.collection}_v2", f"{store.collection}_v3", f"{store.collection}_live"
        with store.for_collection(first) as other:
            other.ensure_collection(DIM, MODEL)
            other.upsert(rows[:1])
        try:
            assert {store.collection, first} <= set(store.collections())
            seen = {s.collection: s.count() for s in store.each_collection()}
            assert seen[store.collection] == 3 and seen[first] == 1
            store.rename(first, renamed)
            assert not store.exists(first) and store.exists(renamed)
            assert store.alias_target(alias) is None
            store.point_alias(alias, store.collection)
            assert store.alias_target(alias) == store.collection and store.exists(alias)
            store.point_alias(alias, renamed)  # switched in one step
            assert store.alias_target(alias) == renamed
            assert alias not in store.collections()
        finally:
            if store.alias_target(alias) is not None:
                store._client.drop_alias(alias)
            with store.for_collection(renamed) as other:
                other.drop()

    # close --------------------------------------------------------------------------------

    def test_configured_from_store_settings(self, backend: Backend):
        settings = StoreSettings(db=backend.uri, collection=backend.collection,
                                 index_plan=getattr(backend, "plan", None), search_consistency="bounded")
        with MilvusStore.configured(settings) as s:
            assert (s.uri, s.collection, s.search_consistency) == (backend.uri, backend.collection, "bounded")
            assert s.ensure_collection(DIM, MODEL).index_type == backend.index_type

    def test_a_store_is_a_context_manager(self, backend: Backend):
        with backend.open() as s:
            s.ensure_collection(DIM, MODEL)
            s.upsert(make_rows(2))
        assert s._closed
        with pytest.raises(RuntimeError):
            with backend.open() as again:
                assert again.count() == 2
                raise RuntimeError("the block fails")
        assert again._closed  # closed on the way out of a failing block too
        s.close()  # and a close after the block is harmless

    @pytest.mark.slow  # a second process opens the store
    def test_close_twice_then_reopen_releases(self, backend: Backend):
        s = backend.open()
        s.ensure_collection(DIM, MODEL)
        s.upsert(make_rows(2))
        s.close()
        s.close()  # a second close must be harmless
        again = backend.open()
        try:
            assert again.count() == 2
        finally:
            again.close()
        # after the last close another process can open the database
        proc = subprocess.run(
            [sys.executable, "-c", CHILD_COUNT.format(uri=s.uri, collection=s.collection)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip().splitlines()[-1] == "2"

    # existing_ids -------------------------------------------------------------------------

    def test_existing_ids(self, store: MilvusStore):
        mine = make_rows(5, tenant="t1")
        theirs = make_rows(3, tenant="t9", model=OTHER_MODEL)
        store.upsert(mine + theirs)
        asked = [r[R.ID] for r in mine[:3]] + [r[R.ID] for r in theirs] + ["0" * 32]
        assert store.existing_ids(asked, MODEL) == {r[R.ID] for r in mine[:3]}
        assert store.existing_ids(asked, OTHER_MODEL) == {r[R.ID] for r in theirs}
        assert store.existing_ids([], MODEL) == set()
        assert store.existing_ids(iter([mine[4][R.ID]]), MODEL) == {mine[4][R.ID]}

    def test_existing_ids_many(self, store: MilvusStore):
        rows = make_rows(300)
        store.upsert(rows)
        asked = [r[R.ID] for r in rows] + [f"{i:032x}" for i in range(300)]
        assert store.existing_ids(asked, MODEL) == {r[R.ID] for r in rows}

    # persistence --------------------------------------------------------------------------

    @pytest.mark.slow  # a second process reads the data
    def test_data_persists_across_processes(self, backend: Backend, open_store):
        s = backend.open()
        try:
            s.ensure_collection(DIM, MODEL)
            rows = make_rows(20, seed=3)
            s.upsert(rows)
            assert s.count() == 20
        finally:
            s.close()  # releases the milvus-lite lock for the child

        probe = rows[7]
        script = textwrap.dedent(
            f"""
            import json, sys
            from pixlake.platform.store import MilvusStore
            s = MilvusStore({s.uri!r}, {s.collection!r})
            try:
                # search first: only the constructor's load_collection makes this work
                hits = s.search([json.loads(sys.argv[1])], k=3, output_fields=["source"])[0]
                count = s.count()
                s.ensure_collection({DIM}, {MODEL!r})  # the reopened collection still matches
                print(json.dumps({{"count": count, "model": s.model(), "hits": hits,
                                   "index": s.describe()["index_type"]}}))
            finally:
                s.close()
            """
        )
        proc = subprocess.run(
            [sys.executable, "-c", script, json.dumps(probe[R.VECTOR])],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["count"] == 20
        assert out["model"] == MODEL
        assert out["index"] == backend.index_type
        assert out["hits"][0]["id"] == probe[R.ID]
        assert out["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert out["hits"][0]["source"] == probe[R.SOURCE]

        # and back in this process, after the child let go
        again = open_store()
        assert again.count() == 20
        assert again.existing_ids([probe[R.ID]], MODEL) == {probe[R.ID]}


# --- lite-specific: locations and classification ------------------------------------------


@pytest.mark.parametrize(
    "uri, kind",
    [
        ("./pixlake.db", LITE),
        ("/abs/dir/x.db", LITE),
        ("relative/dir/x.db", LITE),
        ("http://milvus:19530", SERVER),
        ("https://milvus.example.com", SERVER),
        ("tcp://10.0.0.1:19530", SERVER),
        ("grpc://milvus:19530", SERVER),
    ],
)
def test_backend_of(uri: str, kind: str):
    assert backend_of(uri) == kind


@pytest.mark.parametrize("uri", ["./pixlake", "x.db.bak", "x.sqlite", "", "milvus:19530"])
def test_backend_of_rejects_other_paths(uri: str):
    with pytest.raises(ConfigError) as info:
        backend_of(uri)
    assert ".db" in str(info.value)


def test_store_on_bad_path_is_config_error(tmp_path: Path):
    with pytest.raises(ConfigError):
        MilvusStore(str(tmp_path / "s.sqlite"), "images")


def test_unknown_scheme_is_not_a_lite_path():
    with pytest.raises(ConfigError):
        backend_of("s3://bucket/x.db")


def test_a_server_builds_the_planned_ivf_pq_over_every_row(milvus_server, tmp_path: Path):
    backend = ServerBackend(milvus_server, tmp_path)
    s = backend.open()
    try:
        s.ensure_collection(DIM, MODEL)
        rows = make_rows(2000, seed=5)
        assert s.insert_missing(rows, MODEL) == 2000
        d = s.wait_for_index()
        assert (d["index_type"], d["index_params"]) == ("IVF_PQ", PLAN["params"])
        assert d["indexed_rows"] == 2000 and d["pending_index_rows"] == 0
        index = s._client.describe_index(s.collection, R.VECTOR)  # what the server itself says
        assert index["index_type"] == "IVF_PQ" and int(index["m"]) == 8 and int(index["nlist"]) == 16
        # a new opener searches the collection with the parameters it was built with, plan file or not
        again = MilvusStore(milvus_server, s.collection)
        try:
            assert again.index.search_params == {"nprobe": 16}
            hits = again.search([rows[7][R.VECTOR]], k=5, filter=build_filter("t1"))[0]
            assert rows[7][R.ID] in ids_of(hits)  # PQ scores are approximate; the row is among the top 5
        finally:
            again.close()
    finally:
        s.close()
        backend.cleanup()


class _GrpcAway(Exception):
    """A client error carrying a gRPC status code, as pymilvus re-raises some of them."""

    def __init__(self, status):
        super().__init__("rpc failed")
        self.code = status


@pytest.mark.parametrize("error, retried", [
    (MilvusException(code=2, message="Fail connecting to server on localhost:19530"), True),
    (MilvusException(code=101, message="collection not loaded"), True),
    (MilvusException(code=65535, message="node not ready"), True),
    # what a restarted standalone server answered to a flush in CI (stop 24)
    (MilvusException(code=65535, message="attempt #0: rpc error: code = Unknown desc = node not "
                     "match[expectedNodeID=1][actualNodeID=2]: attempt #4: session not found->"
                     "datanode-1: node not found[node=1]: unrecoverable error"), True),
    (_GrpcAway(grpc.StatusCode.UNAVAILABLE), True),
    (_GrpcAway(grpc.StatusCode.DEADLINE_EXCEEDED), True),
    (ConnectionError("connection refused"), True),
    (MilvusException(code=1100, message="invalid parameter: dim 15, want 16"), False),
    (_GrpcAway(grpc.StatusCode.INVALID_ARGUMENT), False),
    (ValueError("bad row"), False),
])
def test_which_errors_retry(error: Exception, retried: bool):
    assert transient(error) is retried


def test_index_choice():
    assert choose_index(LITE).index_type == "HNSW"
    assert choose_index(SERVER).index_type != "IVF_PQ"  # never a PQ code chosen blind
    plan = IndexPlan(**PLAN)
    assert choose_index(LITE, plan).index_type == "HNSW"  # milvus-lite would not build it
    planned = choose_index(SERVER, plan)
    assert (planned.index_type, planned.params, planned.search_params) == ("IVF_PQ", PLAN["params"], {"nprobe": 16})


def test_an_index_plan_is_read_by_index_plan_load(tmp_path: Path):
    with pytest.raises(ConfigError, match="index plan not found"):
        MilvusStore(str(tmp_path / "s.db"), "images", tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    for text in ("{not json", json.dumps({**PLAN, "surprise": 1})):
        bad.write_text(text)
        with pytest.raises(ConfigError, match="index plan"):
            planned_index(SERVER, bad)
    good = tmp_path / "plan.json"
    IndexPlan(**PLAN).save(good)
    assert planned_index(SERVER, good) == choose_index(SERVER, IndexPlan(**PLAN))
    assert planned_index(SERVER, None) == choose_index(SERVER)


def test_check_db_location_creates_parent(tmp_path: Path):
    target = tmp_path / "a" / "b" / "s.db"
    check_db_location(str(target))
    assert target.parent.is_dir()
    assert not target.exists()


def test_check_db_location_under_a_regular_file(tmp_path: Path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("I am a file")
    with pytest.raises(StoreError) as info:
        check_db_location(str(blocker / "sub" / "s.db"))
    assert "file.txt" in str(info.value)


def test_store_under_a_regular_file_is_store_error(tmp_path: Path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("I am a file")
    with pytest.raises(StoreError):
        MilvusStore(str(blocker / "s.db"), "images")


def test_check_db_location_ignores_servers(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_db_location("http://milvus:19530")
    assert list(tmp_path.iterdir()) == []


def test_check_db_location_rejects_non_db():
    with pytest.raises(ConfigError):
        check_db_location("/tmp/x.sqlite")
