"""Index planning: measured recall per code size, the smallest code that meets the target,
and a plan file the store can load."""

from __future__ import annotations

import numpy as np
import pytest

from pixlake.platform.errors import ConfigError
from pixlake.platform.index_plan import (
    IndexPlan, SegmentedIndex, choose_nlist, exact_topk, plan_index, recall, segment_bounds,
)


def _clustered(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, d))
    x = centres[rng.integers(0, 40, n)] + 0.5 * rng.normal(size=(n, d))
    texts = centres[rng.integers(0, 40, 100)] + 0.8 * rng.normal(size=(100, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), texts.astype(np.float32)


def test_nlist_grows_with_the_corpus_and_stays_trainable():
    assert choose_nlist(1_000) == 16 and choose_nlist(1_000_000) == 2048 and choose_nlist(100_000_000) == 32768
    assert all(choose_nlist(n) <= max(16, n / 39) for n in (500, 5_000, 50_000))


def test_the_smallest_code_that_meets_the_target_is_chosen(tmp_path):
    x, texts = _clustered(3000, 32)
    plan = plan_index(x, x, np.arange(200), texts, lambda q: q, target=0.95, ms=(8, 16, 32), nprobes=(8, 32))
    assert plan.met and plan.index_type == "IVF_PQ" and plan.params["nbits"] == 8
    ms = [c["m"] for c in plan.candidates]
    assert ms == [8, 16, 32] and plan.bytes_per_vector == plan.params["m"]
    ok = [all(r["reranked"] >= 0.95 for r in c["recall"].values()) for c in plan.candidates]
    assert plan.params["m"] == ms[ok.index(True)]  # the first (smallest) that meets it
    for c in plan.candidates:  # the exact re-rank never loses to the PQ ranking alone
        assert all(r["reranked"] >= r["pq"] for r in c["recall"].values())
    # more bytes per vector, better PQ-only recall: the measurement sees the code size
    assert plan.candidates[-1]["recall"]["image_to_image"]["pq"] > plan.candidates[0]["recall"]["image_to_image"]["pq"]
    plan.save(tmp_path / "plan.json")
    assert IndexPlan.load(tmp_path / "plan.json") == plan


def test_an_unreachable_target_keeps_the_largest_code_and_says_so():
    x, texts = _clustered(1000, 16, seed=1)
    plan = plan_index(x, x, np.arange(100), texts, lambda q: q, target=1.01, ms=(8, 16), nprobes=(8,))
    assert not plan.met and plan.params["m"] == 16


def test_too_few_rows_or_a_bad_plan_file_fail_clearly(tmp_path):
    x, texts = _clustered(100, 16)
    with pytest.raises(ConfigError, match="at least 256 rows"):
        plan_index(x, x, np.arange(10), texts, lambda q: q)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="index plan"):
        IndexPlan.load(tmp_path / "bad.json")


def test_segments_are_searched_apart_and_merged_like_milvus():
    x, _ = _clustered(3700, 32, seed=3)
    bounds = segment_bounds(3700, 1200)
    assert bounds == [(0, 1200), (1200, 2400), (2400, 3600), (3600, 3700)]
    index = SegmentedIndex(x, 8, 16, bounds)
    # three IVF-PQ segments, and one too small for Milvus to index, searched exactly
    assert [type(i).__name__ for _, i in index.parts] == ["IndexIVFPQ"] * 3 + ["IndexFlatIP"]
    ids = index.search(x[:50], 30, nprobe=16)
    assert ids.shape == (50, 30) and ids.min() >= 0 and ids.max() < 3700
    assert all(len(set(row)) == 30 for row in ids)  # merged across segments without duplicates
    assert len({int(i) // 1200 for i in ids.ravel()}) == 4  # every segment contributes
    # a row is found in its own segment, under its global id
    assert np.mean(ids[:, 0] == np.arange(50)) > 0.9
    exact = index.search(x[3600:3650], 1, nprobe=16)[:, 0]  # the exact segment finds its own rows
    assert (exact == np.arange(3600, 3650)).all()
    # a collection whose every segment is small is still measured as the index it will get
    assert [type(i).__name__ for _, i in SegmentedIndex(x[:900], 8, 16, [(0, 900)]).parts] == ["IndexIVFPQ"]


def test_the_plan_models_segments_and_picks_the_smallest_re_rank_that_meets_the_target():
    x, texts = _clustered(4000, 32, seed=4)
    plan = plan_index(x, x, np.arange(200), texts, lambda q: q, target=0.95, ms=(4, 8, 16), nprobes=(4, 16),
                      rerank_factor=2, max_rerank_factor=20, segment_rows=1500, opq=False)
    assert plan.segments == 3 and plan.segment_rows == 1500  # 1500, 1500 and 1000 rows and plan.corpus_rows == 4000
    for c in plan.candidates:
        by = c["recall_by_factor"]
        assert list(by["image_to_image"]) == ["2", "5", "10", "20"]
        for curve in by.values():  # re-ranking more candidates never loses recall
            assert all(a <= b for a, b in zip(list(curve.values()), list(curve.values())[1:]))
        meets = all(r["reranked"] >= 0.95 for r in c["recall"].values())
        if meets:  # no smaller factor met it at the chosen nprobe
            smaller = [f for f in by["image_to_image"] if int(f) < c["rerank_factor"]]
            assert all(min(by[q][f] for q in by) < 0.95 for f in smaller)
    assert plan.met and plan.rerank_factor == next(c for c in plan.candidates if c["m"] == plan.params["m"])["rerank_factor"]
    # PQ alone at m=4 misses, and a larger re-rank is what repairs it
    small = plan.candidates[0]
    assert small["recall"]["image_to_image"]["pq"] < 0.95 and small["rerank_factor"] > 2


def test_exact_topk_in_chunks_matches_one_pass_and_excludes_a_querys_own_row():
    x, _ = _clustered(1000, 16, seed=5)
    queries = x[:20]
    ids, scores = exact_topk(queries, x, 15, exclude=np.arange(20), chunk=8)  # chunks smaller than k
    full = queries @ x.T
    full[np.arange(20), np.arange(20)] = -np.inf
    expected = np.argsort(-full, axis=1, kind="stable")[:, :15]
    assert (ids == expected).all()
    assert np.allclose(scores, np.take_along_axis(full, expected, 1))
    assert not (ids == np.arange(20)[:, None]).any()
    # recall: the share of the true ids found, ignoring -1 pads
    assert recall(np.where(np.arange(15) < 10, ids, -1), ids) == pytest.approx(10 / 15)
    assert recall([list(ids[0][::-1])], ids[:1]) == 1.0
