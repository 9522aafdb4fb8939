"""`pixlake plan-index` on a real embedded collection: trains on --sample rows, measures on more."""

from __future__ import annotations

import json

from pixlake.jobs.plan_index import main as plan_main
from pixlake.platform.corpus import MANIFEST, write_corpus
from pixlake.platform.pipeline.job import run_embed_job
from tests.conftest import TINY, TINY_BETA, tiny_settings


def test_plan_index_measures_on_more_rows_than_it_trains_on(ray_session, tmp_path, monkeypatch):
    write_corpus(tmp_path / "c", 320, seed=2, holdout=1.0)
    db = tmp_path / "p.db"
    report = run_embed_job(str(tmp_path / "c" / MANIFEST), tiny_settings(db))
    assert report.embedded == 320
    monkeypatch.setenv("PIXLAKE_GOVERNANCE__BETA", str(TINY_BETA))
    out = tmp_path / "plan.json"
    code = plan_main(["--db", str(db), "--collection", "images", "--model", TINY[0], "--pretrained", TINY[1],
                      "--sample", "256", "--measure-rows", "100000", "--queries", "50", "--out", str(out)])
    assert code == 0
    plan = json.loads(out.read_text())
    # Measured on every row of the collection (fewer than --measure-rows), trained on 256.
    assert plan["rows_sampled"] == 320
    assert plan["index_type"] == "IVF_PQ" and plan["params"]["m"] in (8, 16, 32)
    assert set(plan["recall"]) == {"image_to_image", "text_to_image"}
    assert all(0.0 <= r["reranked"] <= 1.0 for r in plan["recall"].values())
