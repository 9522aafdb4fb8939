"""The embed job, the encrypted query path with its exact re-rank, and erasure, unchanged
against a real Milvus server (embedded ``milvus`` package) with a planned IVF_PQ index."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pixlake.platform import records as R
from pixlake.platform.errors import ConfigError
from pixlake.platform.compliance.erasure import STEPS, Eraser
from pixlake.platform.governance.keys import load_master_key
from pixlake.platform.compliance import open_governed_store
from pixlake.platform.pipeline.job import run_embed_job
from pixlake.platform.query import open_collection
from pixlake.platform.settings import load_settings
from tests.conftest import TINY, TINY_BETA

PLAN = {"index_type": "IVF_PQ", "params": {"nlist": 16, "m": 8, "nbits": 8}, "search_params": {"nprobe": 16},
        "rerank_factor": 8, "recall": {"image_to_image": {"pq": 0.9, "reranked": 1.0}}, "bytes_per_vector": 8, "dim": 32,
        "rows_sampled": 1000, "target": 0.95, "k": 10, "met": True, "candidates": [], "version": 1}


@pytest.fixture
def server_settings(milvus_server, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    keys = tmp_path / "keys"
    load_master_key(keys, create=True)  # an operator-provided key file (a server never creates one)
    return load_settings(overrides={
        "store": {"db": milvus_server, "collection": f"e2e_{tmp_path.name[-10:].replace('-', '_')}", "index_plan": str(plan)},
        "encoder": {"model": TINY[0], "pretrained": TINY[1]},
        "job": {"batch_size": 16},
        "governance": {"beta": TINY_BETA, "key_dir": str(keys)},
    })


def test_a_server_deployment_without_a_key_source_fails_before_any_work(milvus_server, corpus_dir):
    settings = load_settings(overrides={"store": {"db": milvus_server}, "encoder": {"model": TINY[0], "pretrained": TINY[1]}})
    with pytest.raises(ConfigError, match="governance.key_dir"):
        run_embed_job(str(corpus_dir), settings)


def test_embed_search_and_erase_against_the_server(ray_session, corpus_dir, tmp_path, server_settings, tiny_encoder):
    images = sorted(corpus_dir.glob("*.png"))[:24]
    pq.write_table(pa.table({"path": [str(p) for p in images], "subject": [f"s{i % 4}" for i in range(24)]}),
                   tmp_path / "rows.parquet")
    report = run_embed_job(str(tmp_path / "rows.parquet"), server_settings)
    assert (report.backend, report.index_type, report.embedded, report.collection_count) == ("milvus-server", "IVF_PQ", 24, 24)
    assert report.index_note.startswith("planned")

    collection = open_collection(server_settings, report.model)
    try:
        described = collection.store.wait_for_index()
        assert described["indexed_rows"] == 24 and described["pending_index_rows"] == 0
        # The plan's re-rank (x8) outranks the configured one (x5): 8 candidates per hit are read back.
        assert collection.rerank_factor == 8 and collection.store.describe()["rerank_factor"] == 8
        limits, search = [], collection.store.search
        collection.store.search = lambda *a, **kw: limits.append(kw["k"]) or search(*a, **kw)
        for path in images[:6]:
            hit = collection.search(tiny_encoder.embed_images([Image.open(path).convert("RGB")])[0], k=1)[0]
            assert hit["source"] == str(path) and hit["score"] > 0.999  # exact after decrypt-and-re-rank
        assert limits == [8] * 6
        raw = collection.store.query("", (R.SOURCE, R.VECTOR))
        assert all(r[R.SOURCE].startswith("v1.") for r in raw)  # sealed on the server too
    finally:
        collection.close()

    # Serve's bounded searches may see Milvus state a few seconds old: an erased subject's rows
    # must still never come back (deny-list and shredded keys, checked on every hit).
    bounded = open_collection(server_settings.model_copy(update={"store": server_settings.store.model_copy(
        update={"search_consistency": "bounded"})}), report.model)
    erased = [tiny_encoder.embed_images([Image.open(p).convert("RGB")])[0] for p in images[1::4]]  # subject s1
    try:
        deadline = time.monotonic() + 30  # bounded: the newest writes show within a few seconds
        while [bounded.search(v, k=1)[0]["source"] for v in erased] != [str(p) for p in images[1::4]]:
            assert time.monotonic() < deadline, "bounded searches never saw the subject's rows"
            time.sleep(0.5)
        with open_governed_store(server_settings) as (store, governance):
            eraser = Eraser(store, governance)
            erasure_id, _ = eraser.start("default", "s1")
            receipt = eraser.run(erasure_id)
        sources = {h["source"] for v in erased for h in bounded.search(v, k=24)}
        assert sources and not sources & {str(p) for p in images[1::4]}
    finally:
        bounded.close()

    with open_governed_store(server_settings) as (store, governance):
        pseudonym = governance.pseudonym("default", "s1")
        assert receipt["verified"] and [s["name"] for s in receipt["steps"]] == list(STEPS[:-1])
        assert {s["name"]: s["count"] for s in receipt["steps"]}["delete"] == 6
        assert store.count(f'{R.SUBJECT} == "{pseudonym}"') == 0 and store.count() == 18  # Strong, at once
        store.drop()


def test_an_erasure_crashed_between_any_two_steps_resumes_on_the_server(ray_session, tmp_path, server_settings,
                                                                       monkeypatch, capsys):
    import subprocess
    import sys

    from pixlake.platform.corpus import write_corpus
    from pixlake.platform.compliance.erasure import FAULT_ENV
    from tests.conftest import TINY_ENV, run_cli, subprocess_env

    write_corpus(tmp_path / "c", 24, seed=13, holdout=1.0)
    rows = pq.read_table(tmp_path / "c" / "manifest.parquet").to_pylist()
    subjects = [f"s{i}" for i in range(len(STEPS) - 1)]
    pq.write_table(pa.table({"path": [str(tmp_path / "c" / r["path"]) for r in rows],
                             "subject": [subjects[i % len(subjects)] for i in range(len(rows))]}), tmp_path / "rows.parquet")
    assert run_embed_job(str(tmp_path / "rows.parquet"), server_settings).embedded == len(rows)
    env = {**TINY_ENV, "PIXLAKE_GOVERNANCE__KEY_DIR": str(server_settings.governance.key_dir),
           "PIXLAKE_GOVERNANCE__BETA": str(TINY_BETA)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    erase = ["erase", "--db", server_settings.store.db, "--json", "--subject"]
    for step, subject in zip(STEPS[:-1], subjects):
        # the crash kills its process (exit 137), so it needs one; the resume runs here
        crashed = subprocess.run([str(Path(sys.executable).parent / "pixlake"), *erase, subject],
                                 env=subprocess_env(**env, **{FAULT_ENV: step}), capture_output=True, text=True, timeout=300)
        assert crashed.returncode == 137, (step, crashed.stderr[-2000:])
        code = run_cli(*erase, subject)
        out, err = capsys.readouterr()
        assert code == 0, (step, err[-2000:])
        receipt = json.loads(out)
        assert receipt["verified"] and [s["name"] for s in receipt["steps"]] == list(STEPS[:-1]), step  # each step once
    with open_governed_store(server_settings) as (store, governance):
        try:
            assert store.count() == 0  # every subject erased, each after a crash at another step
        finally:
            store.drop()
