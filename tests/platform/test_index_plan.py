"""Index planning: measured recall per code size, the smallest code that meets the target,
and a plan file the store can load."""

from __future__ import annotations

import numpy as np
import pytest

from pixlake.platform.errors import ConfigError
from pixlake.platform.index_plan import IndexPlan, choose_nlist, plan_index


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
