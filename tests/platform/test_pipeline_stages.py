"""The skip, decode and write stages as plain callables on pyarrow batches (no Ray), over a
real milvus-lite store and real governance: what each passes on, marks or writes. (Load and
protect: test_load_stage.py, test_protect_stage.py; the job end to end: tests/jobs/.)"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pixlake.platform import records as R
from pixlake.platform.governance.service import Governance
from pixlake.platform.images import DecodeLimits
from pixlake.platform.encoder import PreprocessSpec
from pixlake.platform.pipeline.decode import DecodeImages
from pixlake.platform.pipeline.rows import ERASED, OK, REJECTED, SKIPPED, table
from pixlake.platform.pipeline.sink import MilvusDatasink, to_record
from pixlake.platform.pipeline.skip import SkipExisting
from pixlake.platform.settings import GovernanceSettings
from pixlake.platform.store import MilvusStore

DIM, MODEL = 8, "model-fp"
SPEC = PreprocessSpec(size=16, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic", resize_mode="shortest", fill_color=0)


pytestmark = pytest.mark.usefixtures("no_master_key_env")


@pytest.fixture
def store(tmp_path):
    with MilvusStore(str(tmp_path / "s.db"), "images") as s:
        s.ensure_collection(DIM, MODEL)
        yield s


@pytest.fixture
def governance(tmp_path):
    g = Governance(tmp_path / "governance", GovernanceSettings(encryption=False))
    yield g
    g.close()


def _png(seed: int, size=(20, 12)) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def _row(i: int, subject: str = "s", status: str = OK, tenant: str = "acme", **extra) -> dict:
    return {"source": f"/img/{i}.png", "id": f"id{i}", "tenant": tenant, "subject": subject, "content_hash": f"h{i}",
            "meta": json.dumps({"n": i}), "status": status, "reason": "", **extra}


def _vector(i: int) -> list[float]:
    v = np.random.default_rng(i).normal(size=DIM)
    return (v / np.linalg.norm(v)).tolist()


def _embedded(rows: list[dict]) -> pa.Table:
    return table([{**r, "vector": r.get("vector") or _vector(int(r["id"][2:])), "nonce": "", "key_id": ""} for r in rows],
                 [("vector", pa.list_(pa.float32(), DIM)), ("nonce", pa.string()), ("key_id", pa.string())])


# --- SkipExisting --------------------------------------------------------------------------

def test_skip_marks_denied_existing_and_repeated_rows_and_passes_the_rest(store, governance):
    store.insert_missing([to_record(r, MODEL) for r in _embedded([_row(1)]).to_pylist()], MODEL)
    governance.ledger.deny("acme", "gone", "erasure-1")
    batch = table([{**_row(i, subject=s), "image": b"x"} for i, s in [(1, "s"), (2, "gone"), (3, "s"), (3, "s")]]
                  + [{**_row(4, status=REJECTED), "image": b""}], [("image", pa.binary())])
    out = SkipExisting(store, MODEL, governance)(batch).to_pylist()
    assert [(r["id"], r["status"], r["reason"]) for r in out] == [
        ("id1", SKIPPED, "already embedded"), ("id2", SKIPPED, ERASED), ("id3", OK, ""),
        ("id3", SKIPPED, "duplicate in source"), ("id4", REJECTED, "")]
    assert [r["image"] for r in out] == [b"", b"", b"x", b"", b""]  # skipped rows drop their bytes


def test_skip_checks_the_deny_list_per_tenant_and_existing_ids_per_model(store, governance):
    store.insert_missing([to_record(r, "other-model") for r in _embedded([_row(1)]).to_pylist()], "other-model")
    governance.ledger.deny("globex", "s", "erasure-1")  # the same subject name in another tenant
    batch = table([{**_row(1), "image": b"x"}, {**_row(2, tenant="globex"), "image": b"y"}], [("image", pa.binary())])
    out = SkipExisting(store, MODEL, governance)(batch).to_pylist()
    assert [(r["status"], r["reason"]) for r in out] == [(OK, ""), (SKIPPED, ERASED)]


# --- DecodeImages --------------------------------------------------------------------------

def test_decode_turns_images_into_model_sized_pixels_and_rejects_with_a_reason():
    rows = [{**_row(0), "image": _png(0)}, {**_row(1), "image": b"not an image"},
            {**_row(2), "image": _png(2, size=(300, 300))}, {**_row(3, status=SKIPPED), "image": b""}]
    out = DecodeImages(SPEC, DecodeLimits(max_pixels=200 * 200))(table(rows, [("image", pa.binary())])).to_pylist()
    assert [r["status"] for r in out] == [OK, REJECTED, REJECTED, SKIPPED]
    assert len(out[0]["pixels"]) == 16 * 16 * 3 and out[0]["jpeg"] == b""
    assert out[1]["reason"].startswith("not_an_image") and out[2]["reason"].startswith("decompression_bomb"), out
    assert "image" not in out[0] and out[3]["pixels"] == b""


def test_decode_matches_the_encoders_own_preprocessing(tiny_encoder):
    data = _png(5, size=(40, 30))
    out = DecodeImages(tiny_encoder.preprocess, DecodeLimits())(table([{**_row(5), "image": data}], [("image", pa.binary())]))
    side = tiny_encoder.preprocess.size if isinstance(tiny_encoder.preprocess.size, int) else tiny_encoder.preprocess.size[0]
    pixels = np.frombuffer(out.column("pixels")[0].as_py(), np.uint8).reshape(side, side, 3)
    expected = tiny_encoder.preprocess.pil_transform()(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(pixels, expected)


# --- the sink ------------------------------------------------------------------------------

def test_the_sink_writes_ok_rows_once_and_counts_everything_else(store, governance):
    sink = MilvusDatasink(store, MODEL, max_rejections_listed=1, governance=governance, batch_rows=2)
    rows = [_row(1), _row(2), _row(3, status=SKIPPED, reason="already embedded"),
            {**_row(4, status=REJECTED), "reason": "truncated"}, {**_row(5, status=REJECTED), "reason": "empty"},
            {**_row(6, status=SKIPPED), "reason": ERASED}]
    result = sink.write([_embedded(rows[:3]), _embedded(rows[3:])], None)
    assert {k: result[k] for k in ("embedded", "skipped", "erased", "rejected")} == \
        {"embedded": 2, "skipped": 2, "erased": 1, "rejected": 2}
    assert result["rejections"] == [{"source": "/img/4.png", "reason": "truncated"}]  # capped at 1, count exact
    assert sorted(r[R.ID] for r in store.query("", [R.ID])) == ["id1", "id2"]

    again = sink.write([_embedded(rows[:2])], None)  # a retried write task: nothing twice
    assert (again["embedded"], again["skipped"]) == (0, 2) and store.count() == 2
    sink.on_write_complete(type("WriteResult", (), {"write_returns": [result, again]})())
    assert sink.totals["embedded"] == 2 and sink.totals["skipped"] == 4 and len(sink.totals["rejections"]) == 1


def test_the_sink_drops_rows_of_a_subject_denied_before_the_write(store, governance):
    governance.ledger.deny("acme", "gone", "erasure-1")
    sink = MilvusDatasink(store, MODEL, max_rejections_listed=5, governance=governance)
    result = sink.write([_embedded([_row(1, subject="gone"), _row(2)])], None)
    assert (result["embedded"], result["erased"]) == (1, 1)
    assert [r[R.ID] for r in store.query("", [R.ID])] == ["id2"]
