"""The embed job end to end, in-process on a shared local Ray, into real milvus-lite."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pixlake.platform.pipeline.job import run_embed_job
from pixlake.platform.query import QueryCollection, open_collection
from pixlake.platform.store import build_filter
from tests.badinputs import halves, write_bad_input_corpus
from tests.conftest import tiny_settings

REPORT_KEYS = {"run_id", "model", "source", "embedded", "skipped", "rejected", "rejections", "seconds", "images_per_s"}


def _collection(db: Path, fingerprint: str) -> QueryCollection:
    """The collection through the query path: decrypted and re-ranked."""
    return open_collection(tiny_settings(db), fingerprint)


def test_folder_job_embeds_everything_an_image_finds_itself_and_a_rerun_embeds_nothing(ray_session, corpus_dir,
                                                                                       tmp_path, tiny_encoder):
    db = tmp_path / "p.db"
    report_path = tmp_path / "report.json"
    settings = tiny_settings(db, report=report_path)
    report = run_embed_job(str(corpus_dir), settings)

    images = sorted(corpus_dir.glob("*.png"))
    assert report.embedded == len(images) == 48
    assert (report.skipped, report.rejected) == (0, 0)
    saved = json.loads(report_path.read_text())
    assert REPORT_KEYS <= saved.keys()
    assert saved["embedded"] == 48 and saved["model"] == tiny_encoder.fingerprint
    assert saved["collection_count"] == 48
    # where the fixed cost before the first batch went, in order, within the run
    phases = saved["startup"]
    assert list(phases) == ["ray", "owners", "encoder", "pipeline", "first_embedded"], phases
    assert list(phases.values()) == sorted(phases.values()) and phases["first_embedded"] <= report.seconds

    collection = _collection(db, tiny_encoder.fingerprint)
    try:
        assert collection.store.count() == 48
        from PIL import Image

        for path in images[:5]:
            vector = tiny_encoder.embed_images([Image.open(path).convert("RGB")])[0]
            hits = collection.search(vector, k=3, tenant="default")
            assert hits[0]["source"] == str(path)
            assert hits[0]["score"] > 0.999
    finally:
        collection.close()

    second = run_embed_job(str(corpus_dir), tiny_settings(db))
    assert (second.embedded, second.skipped, second.rejected) == (0, 48, 0)
    assert second.collection_count == 48


@pytest.mark.parametrize("gpu_decode", [False, True], ids=["cpu-decode", "device-decode"])
def test_bad_inputs_are_embedded_or_rejected_with_reasons(ray_session, tmp_path, gpu_decode):
    """Same outcomes whether JPEGs decode in CPU tasks or on the encoder's device (here its CPU)."""
    from tests.badinputs import EXPECTED_REJECTION_CODES

    must_embed, must_reject = write_bad_input_corpus(tmp_path / "bad")
    # An unreadable path can only come from a manifest naming a file that is not there.
    manifest = tmp_path / "manifest.parquet"
    # Plain JPEGs too, so the device path has work: these embed either way.
    for i in range(3):
        path = tmp_path / "bad" / f"plain{i}.jpg"
        halves((40 * i, 90, 200), (250, 250 - 60 * i, 10), size=(48, 36)).save(path, quality=90)
        must_embed[path.name] = path
    paths = [str(p) for p in [*must_embed.values(), *must_reject.values()]] + [str(tmp_path / "gone.jpg")]
    pq.write_table(pa.table({"path": paths}), manifest)

    report = run_embed_job(str(manifest), tiny_settings(tmp_path / "p.db", gpu_decode=gpu_decode))
    assert report.decode == ("encoder-cpu-jpeg" if gpu_decode else "cpu-tasks")

    # Identical files would collapse to one row; the corpus has none.
    assert report.embedded == len(must_embed), report.rejections
    reasons = {Path(r["source"]).name: r["reason"] for r in report.rejections}
    assert report.rejected == len(must_reject) + 1 == len(reasons)
    for name in must_reject:
        code = reasons[name].split(":", 1)[0]
        assert code in EXPECTED_REJECTION_CODES[name], (name, reasons[name])
    assert reasons["gone.jpg"].startswith("unreadable:")


def test_parquet_with_inline_bytes_subjects_tenants_and_metadata(ray_session, corpus_dir, tmp_path, tiny_encoder):
    images = sorted(corpus_dir.glob("*.png"))[:12]
    table = pa.table(
        {
            "image": [p.read_bytes() for p in images],
            "subject": [f"person-{i % 3}" for i in range(12)],
            "tenant": ["acme" if i % 2 else "globex" for i in range(12)],
            "label": [f"l{i % 4}" for i in range(12)],
            "rank": list(range(12)),
        }
    )
    pq.write_table(table, tmp_path / "rows.parquet")
    report = run_embed_job(str(tmp_path / "rows.parquet"), tiny_settings(tmp_path / "p.db", allow_manifest_tenants=True))
    assert report.embedded == 12

    collection = _collection(tmp_path / "p.db", tiny_encoder.fingerprint)
    try:
        store = collection.store
        assert store.count(build_filter("acme")) == 6
        assert store.count(build_filter("globex", {"label": "l2"})) == 3
        raw = store.query(build_filter("acme"), ["subject", "meta", "source"])
        assert all(r["subject"] and "person" not in r["subject"] for r in raw)  # pseudonyms, never raw ids
        assert {r["meta"]["rank"] for r in raw} == {1, 3, 5, 7, 9, 11}  # plaintext metadata stays filterable
        assert all(r["source"].startswith("v1.") for r in raw)  # sealed
        rows = collection.read("acme")
        assert len(rows) == 6 and all(r["source"].startswith("content:") for r in rows)  # opened
        # A tenant's search never returns another tenant's rows.
        from PIL import Image

        vector = tiny_encoder.embed_images([Image.open(images[0]).convert("RGB")])[0]  # images[0] is globex
        hits = collection.search(vector, k=12, tenant="acme")
        assert len(hits) == 6 and hits[0]["score"] < 0.999999
    finally:
        collection.close()


def test_a_manifest_cannot_choose_another_tenant_nor_read_devices(ray_session, corpus_dir, tmp_path):
    """Without --allow-manifest-tenants the job's tenant is every row's: a manifest row naming
    another is a rejection, as are a device and an object-store URI carrying connection options."""
    images = sorted(corpus_dir.glob("*.png"))[:3]
    paths = [str(p) for p in images] + ["/dev/zero", "s3://bucket/a.png?endpoint_override=127.0.0.1:9"]
    pq.write_table(pa.table({"path": paths, "tenant": ["acme", "", "globex", "", ""]}), tmp_path / "rows.parquet")
    report = run_embed_job(str(tmp_path / "rows.parquet"), tiny_settings(tmp_path / "p.db", tenant="acme"))
    assert (report.embedded, report.rejected) == (2, 3)
    reasons = {r["source"]: r["reason"] for r in report.rejections}
    assert reasons[paths[2]].startswith("tenant_mismatch: manifest names tenant 'globex', job runs as 'acme'")
    assert reasons["/dev/zero"].startswith("unreadable: not a regular file")
    assert reasons[paths[4]].startswith("refused:")
    collection = _collection(tmp_path / "p.db", report.model)
    try:
        assert collection.store.count(build_filter("acme")) == 2 and collection.store.count(build_filter("globex")) == 0
    finally:
        collection.close()


def test_only_the_operators_flag_lets_manifests_choose_tenants(tmp_path):
    from pixlake.jobs.embed import build_parser, settings_of

    flags = [str(tmp_path), "--db", str(tmp_path / "p.db"), "--tenant", "acme"]
    assert settings_of(build_parser().parse_args(flags)).job.allow_manifest_tenants is False
    assert settings_of(build_parser().parse_args([*flags, "--allow-manifest-tenants"])).job.allow_manifest_tenants is True


def test_webdataset_shards(ray_session, corpus_dir, tmp_path):
    images = sorted(corpus_dir.glob("*.png"))[:10]
    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(2):
        with tarfile.open(shards / f"shard-{s:03d}.tar", "w") as tar:
            for i, path in enumerate(images[s * 5 : s * 5 + 5]):
                for name, data in [(f"k{s}{i}.png", path.read_bytes()), (f"k{s}{i}.json", json.dumps({"label": s}).encode())]:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    report = run_embed_job(str(shards), tiny_settings(tmp_path / "p.db"))
    assert report.embedded == 10 and report.rejected == 0
    collection = _collection(tmp_path / "p.db", report.model)
    try:
        assert collection.store.count(build_filter(meta={"label": 1})) == 5
        rows = collection.read("default")
        assert len(rows) == 10 and all(".tar#k" in r["source"] for r in rows)
    finally:
        collection.close()


def test_job_embeddings_equal_open_clip_called_directly(ray_session, corpus_dir, tmp_path):
    """The pipeline's split preprocessing + actor must give what open_clip gives on its own."""
    import open_clip
    import torch
    from PIL import Image

    from pixlake.platform.encoder import register_bundled_configs

    register_bundled_configs()
    torch.manual_seed(123)
    model, _, preprocess = open_clip.create_model_and_transforms("pixlake-tiny", pretrained=None)
    ckpt = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    model.eval()

    photo = tmp_path / "odd"
    photo.mkdir()
    rng = np.random.default_rng(5)
    for i, size in enumerate([(97, 61), (40, 160), (300, 300)]):
        Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).save(photo / f"{i}.jpg", quality=95)

    settings = tiny_settings(tmp_path / "p.db")
    settings.encoder.pretrained = str(ckpt)
    report = run_embed_job(str(photo), settings)
    collection = _collection(tmp_path / "p.db", report.model)
    try:
        rows = {r["source"]: np.array(r["vector"]) for r in collection.read("default")}  # decrypted
    finally:
        collection.close()
    assert len(rows) == 3
    for path in sorted(photo.glob("*.jpg")):
        with torch.no_grad():
            ref = model.encode_image(preprocess(Image.open(path).convert("RGB")).unsqueeze(0))[0]
        ref = (ref / ref.norm()).numpy()
        assert float(np.dot(ref, rows[str(path)])) >= 0.999
