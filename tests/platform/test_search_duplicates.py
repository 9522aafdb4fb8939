""""More like this", ``min_score`` and ``collapse_duplicates`` on a real milvus-lite
collection of encrypted rows with planted near-copies (two tenants)."""

from __future__ import annotations

import numpy as np
import pytest

from pixlake.platform.collection import open_collection
from pixlake.platform.dedup import collapse
from tests.jobs.test_dedup_job import _planted, _settings, _write

GROUP = 3  # each planted original has 2 copies: rows 3g, 3g+1, 3g+2


@pytest.fixture
def planted(tmp_path):
    """acme: 4 planted groups of 3 and 10 distinct rows (subject s<k % 5>); other: exact copies."""
    from pixlake.platform.governance.keys import load_master_key

    load_master_key(tmp_path / "keys", create=True)
    settings = _settings(tmp_path / "d.db")
    x, _ = _planted(0)
    ids = _write(settings, "acme", x, [f"s{k % 5}" for k in range(len(x))])
    other = _write(settings, "other", x, ["t"] * len(x), first=1000)
    with open_collection(settings) as collection:
        yield collection, x, ids, other


def test_more_like_this_leaves_the_item_out_and_finds_its_copies_first(planted):
    c, _, ids, other = planted
    hits = c.similar("acme", ids[0], k=5)
    assert ids[0] not in {h["id"] for h in hits}
    assert {h["id"] for h in hits[:2]} == {ids[1], ids[2]} and all(h["score"] > 0.95 for h in hits[:2])
    assert not {h["id"] for h in c.similar("acme", ids[0], k=100)} & set(other)  # other holds exact copies


@pytest.mark.parametrize("item", ["other", "unknown", "malformed"])
def test_more_like_this_of_an_item_not_in_the_tenant_is_none(planted, item):
    c, _, ids, other = planted
    item_id = {"other": other[0], "unknown": "0" * len(ids[0]), "malformed": 'x" or tenant != "'}[item]
    assert c.similar("acme", item_id, k=5) is None


def test_more_like_this_of_a_subject_being_erased_is_none(planted):
    c, _, ids, _ = planted
    c.governance.ledger.deny("acme", c.governance.tenant_crypto("acme").pseudonym("s0"), "erasure-1")
    assert c.similar("acme", ids[0], k=5) is None  # row 0 belongs to s0
    shown = {h["id"] for h in c.similar("acme", ids[1], k=100)}
    assert shown and not shown & {ids[k] for k in range(0, len(ids), 5)}


def test_min_score_cuts_below_it_and_may_return_fewer_than_k(planted):
    c, x, ids, _ = planted
    hits = c.search(x[3], k=10, tenant="acme", min_score=0.9)
    assert {h["id"] for h in hits} == set(ids[3:6]) and all(h["score"] >= 0.9 for h in hits)
    everything = c.search(x[3], k=10, tenant="acme")
    assert len(everything) == 10 and everything[:3] == hits


def test_collapse_returns_one_hit_per_group_with_its_copies(planted):
    c, x, ids, _ = planted
    hits = c.search(x[0], k=30, tenant="acme", collapse=True)
    by_id = {h["id"]: h for h in hits}
    assert len(hits) == 22 - 4 * 2  # every group collapsed to one hit, the 10 distinct rows kept
    assert hits[0]["id"] == ids[0] and hits[0]["copies"] == 2
    for g in range(4):
        members = set(ids[GROUP * g:GROUP * g + GROUP])
        assert len(members & set(by_id)) == 1 and by_id[(members & set(by_id)).pop()]["copies"] == 2
    assert sum(h["copies"] for h in hits) == 8
    plain = c.search(x[0], k=30, tenant="acme")
    assert "copies" not in plain[0] and len(plain) == 22


def test_collapse_with_more_like_this_and_a_small_k(planted):
    c, _, ids, _ = planted
    hits = c.similar("acme", ids[3], k=2, collapse=True)
    # the item left out, its two copies collapse into one hit that stands for the other
    assert len(hits) == 2 and hits[0]["id"] in (ids[4], ids[5]) and hits[0]["copies"] == 1
    assert hits[1]["id"] not in ids[3:6]


def test_collapse_function_keeps_the_best_of_each_group_and_counts_late_copies():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=16), rng.normal(size=16)
    rows = np.array([a, b, a + 0.01 * rng.normal(size=16), b + 0.01 * rng.normal(size=16), a], np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    assert collapse(rows, limit=10) == [(0, 2), (1, 1)]
    assert collapse(rows, limit=1) == [(0, 2)]  # b is past the limit and neither kept nor counted
    assert collapse(rows, limit=10, threshold=1.0) == [(0, 1), (1, 0), (2, 0), (3, 0)]  # only the exact copy
    assert collapse(np.zeros((0, 16), np.float32), limit=3) == []


def _search_cli(capsys, tmp_path, *flags: str) -> tuple[int, str, str]:
    from tests.conftest import run_cli

    (tmp_path / "cfg.yaml").write_text(f"governance:\n  key_dir: {tmp_path / 'keys'}\n")
    code = run_cli("search", "--db", str(tmp_path / "d.db"), "--collection", "dups", "--config",
                   str(tmp_path / "cfg.yaml"), "--tenant", "acme", *flags)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_search_command_more_like_this_collapsed_and_cut(planted, capsys, tmp_path):
    import json

    _, _, ids, _ = planted
    code, out, err = _search_cli(capsys, tmp_path, "--item-id", ids[0], "--min-score", "0.9", "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert len(hits) == 2 and {h["id"] for h in hits} == {ids[1], ids[2]}  # the copies only: the rest is below 0.9
    code, out, err = _search_cli(capsys, tmp_path, "--item-id", ids[0], "--collapse-duplicates", "-k", "3")
    assert code == 0, err
    assert "(+1 near-copies)" in out.splitlines()[0] and len(out.splitlines()) == 3


@pytest.mark.parametrize("flags, message", [
    (["--item-id", "0" * 64], "no item"),
    (["--item-id", "x", "--min-score", "1.5"], "min_score"),
    (["--item-id", "x", "-k", "0"], "k"),
])
def test_search_command_bad_input_is_a_clear_error(planted, capsys, tmp_path, flags, message):
    code, out, err = _search_cli(capsys, tmp_path, *flags)
    assert code != 0 and message in err and "Traceback" not in err
