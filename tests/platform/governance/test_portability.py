"""Export, re-keying and re-encrypting copies read the Milvus rows themselves (one copy of
each vector) and keep search working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pixlake.platform import records as R
from pixlake.platform.errors import GovernanceError
from pixlake.platform.compliance.portability import reencrypt, rekey
from pixlake.platform.governance.service import Governance
from pixlake.platform.pipeline.job import run_embed_job
from pixlake.platform.query import open_collection
from pixlake.platform.store import MilvusStore
from tests.conftest import TINY_ENV, subprocess_env, tiny_settings


@pytest.fixture
def embedded(ray_session, corpus_dir, tmp_path):
    images = sorted(corpus_dir.glob("*.png"))[:24]
    pq.write_table(pa.table({"path": [str(p) for p in images], "subject": [f"s{i % 6}" for i in range(24)]}),
                   tmp_path / "rows.parquet")
    db = tmp_path / "p.db"
    report = run_embed_job(str(tmp_path / "rows.parquet"), tiny_settings(db))
    assert report.embedded == 24
    return {"db": db, "images": images, "fingerprint": report.model}


def _self_first(settings, fingerprint, images, tiny_encoder) -> bool:
    collection = open_collection(settings, fingerprint)
    try:
        return all(collection.search(tiny_encoder.embed_images([Image.open(p).convert("RGB")])[0], k=1)[0]["source"] == str(p)
                   for p in images[:6])
    finally:
        collection.close()


def test_export_cli_gives_the_subjects_exact_embeddings(embedded, tmp_path, tiny_encoder):
    out = tmp_path / "export.json"
    env = subprocess_env(**TINY_ENV)
    proc = subprocess.run([str(Path(sys.executable).parent / "pixlake"), "export", "--subject", "s1", "--db",
                           str(embedded["db"]), "--out", str(out)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    export = json.loads(out.read_text())
    items = export["collections"]["images"]
    mine = [p for i, p in enumerate(embedded["images"]) if i % 6 == 1]
    assert sorted(i["source"] for i in items) == sorted(map(str, mine)) and "s1" not in export["subject"]
    for item in items:
        plain = tiny_encoder.embed_images([Image.open(item["source"]).convert("RGB")])[0]
        assert float(np.dot(plain, item["vector"])) > 0.9999  # decrypted exactly, not the noisy ciphertext


def test_rekey_reencrypts_every_row_and_search_still_works(embedded, tiny_encoder):
    settings = tiny_settings(embedded["db"])
    store, governance = MilvusStore(str(embedded["db"]), "images"), Governance.open(settings)
    try:
        before = {r[R.ID]: r for r in store.query("", (R.VECTOR, R.NONCE))}
        result = rekey(store, governance, "default")
        after = {r[R.ID]: r for r in store.query("", (R.VECTOR, R.NONCE))}
        assert result["rows"] == 24 and (result["from_version"], result["to_version"]) == (1, 2)
        assert set(after) == set(before)  # same ids: pseudonyms and row ids do not depend on the vector key
        assert all(r[R.NONCE].startswith("2:") for r in after.values())
        assert all(not np.allclose(before[i][R.VECTOR], after[i][R.VECTOR]) for i in after)
        with pytest.raises(GovernanceError):
            governance.tenant_key("default", 1)  # the old version is retired
    finally:
        store.close()
        governance.close()
    assert _self_first(settings, embedded["fingerprint"], embedded["images"], tiny_encoder)


def test_reencrypting_into_a_new_collection_needs_no_reembedding(embedded, tiny_encoder):
    settings = tiny_settings(embedded["db"])
    store, governance = MilvusStore(str(embedded["db"]), "images"), Governance.open(settings)
    target = store.for_collection("rebuilt")
    try:
        assert reencrypt(store, target, governance, "default") == 24 == target.count()
    finally:
        target.close()
        store.close()
        governance.close()
    rebuilt = settings.model_copy(update={"store": settings.store.model_copy(update={"collection": "rebuilt"})})
    assert _self_first(rebuilt, embedded["fingerprint"], embedded["images"], tiny_encoder)
