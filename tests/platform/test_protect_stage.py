"""The protect stage as a plain callable on pyarrow batches (no Ray): what it writes reveals
exactly, a subject erased since the read-time check stops here, --no-encryption asks for
no key, and the stage and an erasure agree on which rows are a subject's."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pixlake.platform import records as R
from pixlake.platform.compliance.erasure import Eraser
from pixlake.platform.governance.service import Governance
from pixlake.platform.pipeline.load import LoadItems
from pixlake.platform.pipeline.protect import ProtectRows
from pixlake.platform.pipeline.rows import ERASED, OK, SKIPPED, table
from pixlake.platform.pipeline.sink import to_record
from pixlake.platform.sources.items import ITEM_SCHEMA
from pixlake.platform.settings import GovernanceSettings
from pixlake.platform.store import MilvusStore, build_filter

DIM = 8


pytestmark = pytest.mark.usefixtures("no_master_key_env")


def _governance(tmp_path, **settings) -> Governance:
    return Governance(tmp_path / "governance", GovernanceSettings(**settings))


def _png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def _loaded(governance, tenant: str, subjects: list[str]) -> pa.Table:
    """Items through the load stage, each with a unit vector in place of the embed stage's."""
    base = {"source": "", "path": "", "subject": "", "tenant": "", "meta": json.dumps({"secret": "s", "n": 1})}
    items = pa.Table.from_pylist([{**base, "source": f"/img/{i}.png", "image": _png(i), "subject": s}
                                  for i, s in enumerate(subjects)], schema=ITEM_SCHEMA)
    rows = LoadItems(tenant, 10_000, governance)(items).to_pylist()
    rng = np.random.default_rng(7)
    for r in rows:
        v = rng.normal(size=DIM)
        r["vector"] = (v / np.linalg.norm(v)).tolist()
        del r["image"]
    return table(rows, [("vector", pa.list_(pa.float32(), DIM))])


def test_what_the_stage_writes_reveals_exactly_and_seals_sensitive_metadata(tmp_path):
    governance = _governance(tmp_path, sensitive_meta=["secret"], beta=2.0)
    try:
        batch = _loaded(governance, "acme", ["alice", "bob"])
        out = ProtectRows(governance, DIM)(batch).to_pylist()
        assert [r["status"] for r in out] == [OK, OK] and all(r["nonce"].startswith("1:2.0:") for r in out)
        records = [to_record(r, "m") for r in out]
        assert all(r[R.SOURCE].startswith("v1.") and "secret" not in r[R.META] for r in records)
        plain = batch.column("vector").to_pylist()
        assert not np.allclose(np.asarray([r[R.VECTOR] for r in records]), plain, atol=1e-3)
        revealed = governance.reveal("acme", records)  # the reader's cipher: the same derivation
        np.testing.assert_allclose(np.asarray([r[R.VECTOR] for r in revealed]), plain, atol=1e-5)
        assert [(r[R.SOURCE], r[R.META]) for r in revealed] == [("/img/0.png", {"secret": "s", "n": 1}),
                                                                ("/img/1.png", {"secret": "s", "n": 1})]
    finally:
        governance.close()


def test_a_subject_denied_since_the_read_check_is_skipped_and_gets_no_key(tmp_path):
    governance = _governance(tmp_path)
    try:
        batch = _loaded(governance, "acme", ["alice", "bob"])
        alice = batch.column("subject")[0].as_py()
        erasure_id, _ = Eraser(None, governance).start("acme", "alice")  # an erasure's first step, meanwhile
        assert governance.ledger.get(erasure_id)["subject"] == alice
        governance.ledger.deny("acme", alice, erasure_id)
        out = ProtectRows(governance, DIM)(batch).to_pylist()
        assert [(r["status"], r["reason"]) for r in out] == [(SKIPPED, ERASED), (OK, "")]
        assert out[0]["key_id"] == "" and out[1]["key_id"]
        assert governance.keys.data_keys("acme", [alice], create=False) == {}
    finally:
        governance.close()


def test_without_encryption_the_stage_asks_for_no_key(tmp_path):
    governance = _governance(tmp_path, encryption=False)
    try:
        batch = _loaded(governance, "acme", ["alice"])
        out = ProtectRows(governance, DIM)(batch).to_pylist()
        assert (out[0]["nonce"], out[0]["key_id"], out[0]["source"]) == ("", "", "/img/0.png")
        np.testing.assert_allclose(out[0]["vector"], batch.column("vector")[0].as_py(), atol=1e-7)
        assert governance.keys.live_versions("acme") == []  # no vector key was created
    finally:
        governance.close()


def test_the_stages_and_an_erasure_agree_on_a_subjects_rows(tmp_path):
    """Rows written through the load and protect stages are the ones the erasure of their
    raw subject id finds and deletes; another subject's rows stay and still reveal."""
    governance = _governance(tmp_path)
    store = MilvusStore(str(tmp_path / "p.db"), "images")
    try:
        batch = _loaded(governance, "acme", ["alice", "alice", "bob"])
        records = [to_record(r, "m") for r in ProtectRows(governance, DIM)(batch).to_pylist()]
        store.ensure_collection(DIM, "m")
        store.upsert(records)
        eraser = Eraser(store, governance)
        erasure_id, _ = eraser.start("acme", "alice")
        receipt = eraser.run(erasure_id)
        alice = records[0][R.SUBJECT]
        assert receipt["subject"] == alice and receipt["verified"]
        assert {s["name"]: s["count"] for s in receipt["steps"]}["delete"] == 2
        assert store.count(build_filter("acme", subject=alice)) == 0
        left = governance.reveal("acme", store.query(build_filter("acme"), ["*"]))
        assert [r[R.ID] for r in left] == [records[2][R.ID]]
        np.testing.assert_allclose(left[0][R.VECTOR], batch.column("vector")[2].as_py(), atol=1e-5)
    finally:
        store.close()
        governance.close()
