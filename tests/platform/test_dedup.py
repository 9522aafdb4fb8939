"""Near-duplicate pairs and groups from exact vectors (no Ray, no store)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pixlake.platform import dedup
from pixlake.platform.dedup import check_threshold, group_pairs, near_pairs
from pixlake.platform.errors import ConfigError

DIM = 64


def planted(originals: int = 40, copies: int = 3, distinct: int = 200, seed: int = 0):
    """Unit vectors: ``originals`` each with ``copies`` noisy copies (cosine ~0.98-0.99 to it,
    ~0.98 between copies), then ``distinct`` unrelated rows. Returns (vectors, true groups)."""
    rng = np.random.default_rng(seed)
    rows, groups = [], []
    for _ in range(originals):
        base = rng.normal(size=DIM)
        base /= np.linalg.norm(base)
        members = [len(rows)]
        rows.append(base)
        for _ in range(copies):
            members.append(len(rows))
            rows.append(base + rng.normal(scale=math.sqrt(0.02 / DIM), size=DIM))
        groups.append(frozenset(members))
    rows.extend(rng.normal(size=(distinct, DIM)))
    return np.array(rows, np.float32), groups


def as_sets(groups) -> set[frozenset]:
    return {frozenset([g.representative, *(m for m, _ in g.members)]) for g in groups}


def test_planted_copies_are_grouped_exactly():
    x, truth = planted()
    i, j, s = near_pairs(x, 0.95)
    assert len(i) == len(truth) * 6  # 4 rows per group: 6 pairs, each once
    assert bool(np.all(i < j)) and bool(np.all(s >= 0.95))
    groups = group_pairs(len(x), i, j, s)
    assert as_sets(groups) == set(truth)
    for g in groups:  # every member is scored against its representative, best first
        u = dedup.unit_rows(x)
        for m, score in g.members:
            assert score == pytest.approx(float(u[m] @ u[g.representative]), abs=1e-5) and score >= 0.95
        assert [sc for _, sc in g.members] == sorted((sc for _, sc in g.members), reverse=True)


def test_a_chain_is_not_one_group():
    """a~b, b~c, c~d but a and c (and b and d) below the threshold: each member must be near
    its representative itself, so d stays out rather than joining through c."""
    pairs = {(0, 1): 0.97, (1, 2): 0.96, (2, 3): 0.97}
    i, j = (np.array(v) for v in zip(*pairs))
    groups = group_pairs(4, i, j, np.array(list(pairs.values()), np.float32))
    assert [(g.representative, sorted(m for m, _ in g.members)) for g in groups] == [(1, [0, 2])]


def test_groups_do_not_depend_on_the_order_rows_arrive_in():
    x, _ = planted(originals=20, copies=2, distinct=50, seed=3)
    ids = [f"{k:04d}" for k in range(len(x))]
    first = {frozenset(ids[r] for r in s) for s in as_sets(group_pairs(len(x), *near_pairs(x, 0.95), order=ids))}
    perm = np.random.default_rng(1).permutation(len(x))
    shuffled_ids = [ids[p] for p in perm]
    again = group_pairs(len(x), *near_pairs(x[perm], 0.95), order=shuffled_ids)
    assert {frozenset(shuffled_ids[r] for r in s) for s in as_sets(again)} == first
    reps = {ids[g.representative] for g in group_pairs(len(x), *near_pairs(x, 0.95), order=ids)}
    assert reps == {shuffled_ids[g.representative] for g in again}


def test_the_index_finds_the_pairs_the_exact_product_finds(monkeypatch):
    x, truth = planted(originals=60, copies=3, distinct=3000, seed=5)
    exact = set(zip(*(a.tolist() for a in near_pairs(x, 0.95)[:2])))
    monkeypatch.setattr(dedup, "EXACT_MAX_ROWS", 100)  # force the IVF path at this size
    i, j, s = near_pairs(x, 0.95)
    assert set(zip(i.tolist(), j.tolist())) == exact and len(exact) == 60 * 6
    assert as_sets(group_pairs(len(x), i, j, s)) == set(truth)


def test_nothing_to_pair():
    for x in (np.zeros((0, DIM), np.float32), np.ones((1, DIM), np.float32)):
        i, j, s = near_pairs(x, 0.9)
        assert len(i) == len(j) == len(s) == 0
        assert group_pairs(len(x), i, j, s) == []


@pytest.mark.parametrize("bad", [0, -0.1, 1.0001, float("nan"), float("inf"), "0.9", None, True])
def test_thresholds_outside_zero_one_are_refused(bad):
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        check_threshold(bad)


def test_threshold_one_keeps_only_identical_vectors():
    x, _ = planted(originals=5, copies=2, distinct=10)
    x = np.concatenate([x, x[:3]])  # three exact repeats
    i, j, _ = near_pairs(x, 1.0)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, len(x) - 3), (1, len(x) - 2), (2, len(x) - 1)]


def test_find_duplicates_names_rows_and_tables_them():
    from pixlake.platform.dedup import find_duplicates

    x, truth = planted(originals=3, copies=2, distinct=5, seed=7)
    ids = [f"id{k:02d}" for k in range(len(x))]
    found = find_duplicates(ids, [f"s{k}" for k in range(len(x))], x, 0.95)
    assert (found.rows, len(found.groups), found.rows_in_groups) == (len(x), 3, 9)
    assert {frozenset(i for i, _, _ in g) for g in found.groups} == {frozenset(ids[r] for r in t) for t in truth}
    table = found.table().to_pylist()
    assert len(table) == 9 and sum(r["representative"] for r in table) == 3
    assert all(r["score"] == 1.0 for r in table if r["representative"])
    assert all(r["source"] == "s" + r["id"][2:].lstrip("0").rjust(1, "0") for r in table)
    summary = found.summary(1.23456)
    assert summary["groups"] == 3 and summary["rows_in_groups"] == 9 and summary["seconds"] == 1.235
    first = summary["groups_preview"][0]
    assert first["representative"]["id"] == found.groups[0][0][0] and len(first["members"]) == 2
    empty = find_duplicates([], [], np.zeros((0, DIM), np.float32), 0.9)
    assert empty.table().num_rows == 0 and empty.summary(0)["groups"] == 0


def test_a_pair_the_index_finds_from_either_end_is_kept(monkeypatch):
    """With few lists probed, a pair can be found from one of its rows only. It must be kept
    whichever end found it (as (min, max)), not only when the smaller row found it."""
    rng = np.random.default_rng(11)
    base = rng.normal(size=(400, DIM))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    far = base + rng.normal(scale=math.sqrt(0.08 / DIM), size=base.shape)  # cosine ~0.96: near list borders too
    x = np.concatenate([base, far, rng.normal(size=(3000, DIM))]).astype(np.float32)
    monkeypatch.setattr(dedup, "EXACT_MAX_ROWS", 100)
    monkeypatch.setattr(dedup, "NPROBE", 2)
    raw = {(int(a), int(b)) for rows, cols, _ in dedup._indexed_pairs(dedup.unit_rows(x), 0.95)
           for a, b in zip(rows, cols) if a != b}
    one_sided = {(a, b) for a, b in raw if (b, a) not in raw}
    assert one_sided, "the data must include a pair seen from one end only, or this test proves nothing"
    i, j, _ = near_pairs(x, 0.95)
    assert set(zip(i.tolist(), j.tolist())) == {(min(a, b), max(a, b)) for a, b in raw}
