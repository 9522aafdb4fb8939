"""Governance end to end on real milvus-lite with the real embed job: stored vectors are
ciphertexts yet search finds near-duplicates first; erasure reaches every collection, shreds
keys (a copied row becomes unreadable), is not undone by a re-run, survives a crash between
any two steps, and leaves another subject's identical image alone."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pixlake.platform import records as R
from pixlake.platform.corpus import write_corpus
from pixlake.platform.encoder import load_encoder
from pixlake.platform.errors import GovernanceError
from pixlake.platform.governance.cipher import associated_data, unseal
from pixlake.platform.compliance.erasure import FAULT_ENV, STEPS
from pixlake.platform.governance.service import Governance
from pixlake.platform.pipeline.job import run_embed_job
from pixlake.platform.query import open_collection
from pixlake.platform.settings import load_settings
from pixlake.platform.store import MilvusStore
from tests.conftest import TINY, TINY_ENV, subprocess_env, tiny_settings

DEMO = ("pixlake-demo", "bundled")  # meaningful embeddings, searched at the default beta


def _demo_settings(db: Path, collection: str = "images"):
    return load_settings(overrides={"store": {"db": str(db), "collection": collection},
                                    "encoder": {"model": DEMO[0], "pretrained": DEMO[1]}})


def _source(tmp_path: Path, n: int = 40, subjects: int = 0) -> tuple[Path, list[dict]]:
    """A manifest of ``n`` corpus images (subjects person-*, several images each, or
    ``subjects`` of them round-robin) plus one row giving the first image of the first
    subject, byte for byte, to subject "twin"."""
    write_corpus(tmp_path / "c", n, seed=11, holdout=1.0)
    rows = [{"path": str(tmp_path / "c" / r["path"]), "subject": f"p{i % subjects}" if subjects else r["subject"],
             "label": r["label"]}
            for i, r in enumerate(pq.read_table(tmp_path / "c" / "manifest.parquet").to_pylist())]
    rows.append({**rows[0], "subject": "twin"})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    return tmp_path / "rows.parquet", rows


def _raw(db: Path, collection: str, expr: str = "") -> list[dict]:
    """Rows straight from Milvus, as anyone with database access would read them."""
    store = MilvusStore(str(db), collection)
    try:  # the pymilvus client itself, no pixlake code in the way
        return store._client.query(collection, filter=expr or 'id != ""', output_fields=["*"], consistency_level="Strong")
    finally:
        store.close()


def _erase(db: Path, subject: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    env = subprocess_env(**(env or {}))
    return subprocess.run([str(bin_dir / "pixlake"), "erase", "--subject", subject, "--db", str(db), "--json", *extra],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def embedded(ray_session, tmp_path):
    source, rows = _source(tmp_path)
    db = tmp_path / "p.db"
    for collection in ("images", "copy"):  # erasure must reach every collection
        report = run_embed_job(str(source), _demo_settings(db, collection))
        assert report.embedded == len(rows)
    return {"db": db, "source": source, "rows": rows, "fingerprint": report.model}


def test_stored_vectors_are_ciphertexts_and_near_duplicates_still_come_first(embedded):
    encoder = load_encoder(*DEMO, device="cpu")
    rows, db = embedded["rows"], embedded["db"]
    raw = _raw(db, "images")
    paths = {r["path"] for r in rows}
    assert all(r["source"].startswith("v1.") and r["source"] not in paths for r in raw)  # sealed
    plain = encoder.embed_images([Image.open(r["path"]).convert("RGB") for r in rows[:10]])
    stored = np.array([r["vector"] for r in raw], np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    # no stored vector is (or points like) any plaintext embedding
    assert float((plain @ stored.T).max()) < 0.9

    collection = open_collection(_demo_settings(db), embedded["fingerprint"])
    try:
        for r in rows[1:11]:
            buf = io.BytesIO()
            Image.open(r["path"]).convert("RGB").save(buf, "JPEG", quality=75)  # a near-duplicate
            query = encoder.embed_images([Image.open(buf).convert("RGB")])[0]
            hits = collection.search(query, k=1)
            assert hits[0]["source"] == r["path"], (r["path"], hits)
    finally:
        collection.close()


def test_erasure_reaches_everything_and_a_rerun_does_not_bring_the_subject_back(embedded, tmp_path):
    db, rows = embedded["db"], embedded["rows"]
    subject = rows[0]["subject"]
    mine = [r for r in rows if r["subject"] == subject]
    settings = _demo_settings(db)
    governance = Governance.open(settings)
    pseudonym = governance.pseudonym("default", subject)
    governance.close()
    expr = f'subject == "{pseudonym}"'
    copied = _raw(db, "images", expr)  # a copy taken before the erasure (a backup, a replica)
    assert len(copied) == len(mine) >= 2 and len(_raw(db, "copy", expr)) == len(mine)

    proc = _erase(db, subject)
    assert proc.returncode == 0, proc.stderr
    receipt = json.loads(proc.stdout)
    assert receipt["status"] == "completed" and receipt["verified"] is True
    assert [s["name"] for s in receipt["steps"]] == list(STEPS[:-1])
    counts = {s["name"]: s["count"] for s in receipt["steps"]}
    assert counts["delete"] == 2 * len(mine) and counts["shred"] == 1
    assert subject not in proc.stdout and receipt["subject"] == pseudonym
    assert subject not in (Path(str(db).replace(".db", ".governance")) / "audit.jsonl").read_text()

    # gone from every collection, read directly
    assert _raw(db, "images", expr) == [] and _raw(db, "copy", expr) == []
    # the copy is now a noisy approximation with an unreadable source
    governance = Governance.open(settings)
    try:
        row = copied[0]
        assert governance.keys.keys_by_id("default", [row[R.KEY_ID]]) == {}
        assert governance.reveal("default", copied) == []
        with pytest.raises(GovernanceError):
            unseal(row[R.SOURCE], os.urandom(32), associated_data(row[R.ID], "default", row[R.KEY_ID]))
    finally:
        governance.close()

    # its own images find none of its items; the twin's identical image is still found first
    encoder = load_encoder(*DEMO, device="cpu")
    collection = open_collection(settings, embedded["fingerprint"])
    try:
        ids = {r[R.ID] for r in copied}
        for r in mine:
            hits = collection.search(encoder.embed_images([Image.open(r["path"]).convert("RGB")])[0], k=10)
            assert not ids & {h["id"] for h in hits}
        first = collection.search(encoder.embed_images([Image.open(mine[0]["path"]).convert("RGB")])[0], k=1)[0]
        twin = collection.read("default", subject=collection.governance.pseudonym("default", "twin"))
        assert first["id"] == twin[0][R.ID] and first["score"] > 0.999
    finally:
        collection.close()

    # re-running the embed job over the original source does not resurrect it
    report = run_embed_job(str(embedded["source"]), settings)
    assert report.embedded == 0 and report.erased == len(mine)
    assert _raw(db, "images", expr) == []


def test_a_crash_between_any_two_steps_resumes_to_completion(ray_session, tmp_path):
    source, rows = _source(tmp_path, n=30, subjects=len(STEPS) - 1)
    db = tmp_path / "p.db"
    run_embed_job(str(source), tiny_settings(db))
    subjects = sorted({r["subject"] for r in rows} - {"twin"})
    assert len(subjects) >= len(STEPS) - 1
    owned = tmp_path / "c" / "images"
    config = tmp_path / "gov.yaml"
    config.write_text(f"governance:\n  owned_sources: [{owned}]\n")
    for step, subject in zip(STEPS[:-1], subjects):
        crashed = _erase(db, subject, "--purge-sources", "--config", str(config), env={FAULT_ENV: step, **TINY_ENV})
        assert crashed.returncode == 137, (step, crashed.stderr)
        resumed = _erase(db, subject, "--purge-sources", "--config", str(config), env=TINY_ENV)
        assert resumed.returncode == 0, (step, resumed.stderr)
        receipt = json.loads(resumed.stdout)
        names = [s["name"] for s in receipt["steps"]]
        assert receipt["verified"] and names == list(STEPS[:-1]), (step, names)  # each step exactly once
        mine = [r for r in rows if r["subject"] == subject]
        shared = [r for r in mine if r["path"] == rows[-1]["path"]]  # the twin holds identical bytes: kept
        assert {s["name"]: s["count"] for s in receipt["steps"]}["purge_sources"] == len(mine) - len(shared)
        assert all(Path(r["path"]).exists() == (r in shared) for r in mine)  # owned sources purged
    # nothing of the erased subjects is left; everyone else is intact
    assert len(_raw(db, "images")) == len(rows) - sum(r["subject"] in subjects[:len(STEPS) - 1] for r in rows)
