"""Every embed run reports its embedding statistics and its drift from the previous run of
the same collection and encoder (real Ray job, milvus-lite)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from pixlake.platform.corpus import MANIFEST, write_corpus
from pixlake.platform.drift import HISTORY_FILE
from pixlake.platform.pipeline.job import run_embed_job
from tests.conftest import tiny_settings


def test_runs_report_statistics_and_drift_grows_with_a_shifted_input(ray_session, tmp_path):
    write_corpus(tmp_path / "a", 96, seed=2, holdout=1.0)
    write_corpus(tmp_path / "b", 96, seed=3, holdout=1.0)
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(96):  # a broken feed: static instead of pictures
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noise / f"{i}.png")
    db = tmp_path / "d.db"
    settings = tiny_settings(db, report=str(tmp_path / "report.json"))
    first = run_embed_job(str(tmp_path / "a" / MANIFEST), settings)
    assert first.drift is None and first.embedding_stats["count"] == 96 and first.embedding_stats["nonfinite"] == 0
    assert first.embedding_stats["norm_std"] > 0
    same = run_embed_job(str(tmp_path / "b" / MANIFEST), settings)
    shifted = run_embed_job(str(noise), settings)
    assert same.drift["previous_run"] == first.run_id and shifted.drift["previous_run"] == same.run_id
    assert shifted.drift["score"] > 2 * same.drift["score"], (same.drift, shifted.drift)
    assert shifted.drift["mean_cosine"] < same.drift["mean_cosine"]
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["drift"] == shifted.drift and written["embedding_stats"] == shifted.embedding_stats
    history = (tmp_path / "d.governance" / HISTORY_FILE).read_text().splitlines()
    assert [json.loads(line)["run_id"] for line in history] == [first.run_id, same.run_id, shifted.run_id]
