"""The erasure receipt counts near-copies of the subject's images under other subjects of the
tenant (real milvus-lite, encrypted planted rows), and deletes none of them."""

from __future__ import annotations

import numpy as np
import pytest

from pixlake.platform.collection import open_collection
from pixlake.platform.compliance.erasure import Eraser
from pixlake.platform.governance.keys import load_master_key
from tests.jobs.test_dedup_job import DIM, _settings, _write


@pytest.fixture
def settings(tmp_path):
    load_master_key(tmp_path / "keys", create=True)
    return _settings(tmp_path / "d.db")


def _planted():
    """Rows 0-1: the subject's two images. Rows 2-4: copies of row 0 (cosine ~0.99) under
    subjects b, b and c. Row 5: a copy of row 1 under the subject itself. Rows 6-9: unrelated."""
    rng = np.random.default_rng(3)
    a0, a1 = rng.normal(size=DIM), rng.normal(size=DIM)
    rows = [a0, a1, *(a0 + rng.normal(scale=0.02, size=DIM) for _ in range(3)), a1 + rng.normal(scale=0.02, size=DIM),
            *rng.normal(size=(4, DIM))]
    x = np.array(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), ["a", "a", "b", "b", "c", "a", "d", "d", "e", "e"]


def _erase(settings, tenant: str, subject: str) -> dict:
    with open_collection(settings) as c:
        eraser = Eraser(c.store, c.governance)
        erasure_id, _ = eraser.start(tenant, subject)
        return eraser.run(erasure_id)


def test_the_receipt_counts_other_subjects_near_copies_and_leaves_them(settings):
    x, subjects = _planted()
    ids = _write(settings, "acme", x, subjects)
    _write(settings, "other", x, ["a"] * len(x), first=1000)  # another tenant's exact copies never count
    receipt = _erase(settings, "acme", "a")
    assert receipt["status"] == "completed" and receipt["verified"]
    assert receipt["near_copies"] == 3  # rows 2, 3, 4: not row 5 (the subject's own), not other's
    assert [s["name"] for s in receipt["steps"]][0] == "near_copies" and receipt["steps"][0]["count"] == 3
    assert set(str(receipt).split("'")) & set(ids) == set()  # a count, no ids
    with open_collection(settings) as c:
        left = {r["id"] for r in c.read("acme")}
    assert left == {ids[k] for k in range(len(ids)) if subjects[k] != "a"}  # every near-copy is still there


def test_a_subject_with_no_near_copies_and_a_resumed_erasure_past_the_deny(settings):
    x, subjects = _planted()
    _write(settings, "acme", x, subjects)
    assert _erase(settings, "acme", "e")["near_copies"] == 0  # rows 8, 9: unrelated to everything
    with open_collection(settings) as c:  # an erasure whose deny came first: the vectors are closed now
        eraser = Eraser(c.store, c.governance)
        erasure_id, _ = eraser.start("acme", "d")
        c.governance.ledger.deny("acme", c.governance.pseudonym("acme", "d"), erasure_id)
        receipt = eraser.run(erasure_id)
    assert receipt["near_copies"] is None and receipt["steps"][0]["status"] == "skipped" and receipt["verified"]
