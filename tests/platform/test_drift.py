"""Embedding statistics, drift scores, the run history, and non-finite embeddings rejected."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from pixlake.platform.drift import NON_FINITE, EmbeddingStats, StatsHistory, drift, withheld_reason
from pixlake.platform.governance.ledger import LEDGER_FILE, Ledger
from pixlake.platform.pipeline.embed import EmbedImages
from pixlake.platform.pipeline.rows import OK, REJECTED, table
from pixlake.platform.pipeline.run_metrics import RunMetrics
from tests.conftest import TINY


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _sample(n: int, centre: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = centre + 0.5 * rng.standard_normal((n, len(centre)))
    return _unit(raw), np.linalg.norm(raw, axis=1)


def test_statistics_merge_exactly_batch_by_batch():
    v, n = _sample(300, np.ones(16), 0)
    merged = EmbeddingStats(16)
    for s in range(0, 300, 64):
        merged.add(EmbeddingStats.of(v[s:s + 64], n[s:s + 64], nonfinite=1))
    whole = EmbeddingStats.of(v, n)
    assert merged.count == 300 and merged.nonfinite == 5
    np.testing.assert_allclose(merged.mean_vector, v.mean(0), atol=1e-9)
    np.testing.assert_allclose(merged.dim_std, v.std(0), atol=1e-9)
    assert abs(merged.summary()["norm_mean"] - n.mean()) < 1e-5 and abs(merged.summary()["norm_std"] - n.std()) < 1e-5
    assert merged.summary()["count"] == whole.summary()["count"]


def test_drift_is_small_within_a_distribution_and_large_across_a_shift():
    centre = np.random.default_rng(1).standard_normal(32)
    a = EmbeddingStats.of(*_sample(2000, centre, 2))
    same = drift(a, EmbeddingStats.of(*_sample(2000, centre, 3)))
    moved = drift(a, EmbeddingStats.of(*_sample(2000, centre + 0.8 * np.random.default_rng(4).standard_normal(32), 5)))
    assert same["score"] < 0.1 < moved["score"]
    assert same["mean_cosine"] > 0.99 > moved["mean_cosine"]


def test_history_returns_the_latest_run_of_the_same_collection_and_model(tmp_path):
    history = StatsHistory(tmp_path)
    assert history.last("db", "images", "m") is None
    v, n = _sample(50, np.ones(8), 0)
    history.append("r1", "db", "images", "m", "t1", EmbeddingStats.of(v, n))
    history.append("r2", "db", "images", "m", "t2", EmbeddingStats.of(v[:10], n[:10]))
    history.append("r3", "db", "images", "other-model", "t3", EmbeddingStats.of(v, n))
    with history.path.open("a") as f:
        f.write('{"run_id": "torn')  # a crash mid-append
    run_id, stats = history.last("db", "images", "m")
    assert run_id == "r2" and stats.count == 10
    assert history.last("db", "thumbs", "m") is None


def test_small_runs_and_runs_during_an_erasure_keep_no_per_dimension_moments(tmp_path):
    v, n = _sample(40, np.ones(8), 0)
    big, one = EmbeddingStats.of(v, n), EmbeddingStats.of(v[:1], n[:1])
    started = "2030-01-01T00:00:00+00:00"
    assert withheld_reason(big, 32, tmp_path, started) is None  # no ledger yet: no erasure
    assert "fewer than 32" in withheld_reason(one, 32, tmp_path, started)
    assert withheld_reason(one, 1, tmp_path, started) is None  # the operator's explicit opt-out
    ledger = Ledger(tmp_path / LEDGER_FILE)
    verified = ledger.open_erasure("t", "p1", False)[0]
    ledger.record(verified, "verify")  # verified now, before a run that starts in 2030: harmless
    assert withheld_reason(big, 32, tmp_path, started) is None
    ledger.open_erasure("t", "p2", False)  # under way: a run now may embed its subject before the deny
    assert "erasure" in withheld_reason(big, 32, tmp_path, "2000-01-01T00:00:00+00:00")

    history = StatsHistory(tmp_path)
    history.append("r1", "db", "images", "m", "t1", big)
    history.append("r2", "db", "images", "m", "t2", one, withheld="fewer than 32 vectors")
    entry = json.loads(history.path.read_text().splitlines()[1])
    assert entry["moments_withheld"] and "vec_sum" not in entry["stats"] and entry["stats"]["count"] == 1
    run_id, stats = history.last("db", "images", "m")  # drift compares with the last run that has moments
    assert run_id == "r1" and drift(stats, big)["score"] == 0.0
    assert history.path.stat().st_mode & 0o777 == 0o600


def test_an_erasure_drops_the_moments_of_every_run_of_the_collection_and_its_versions(tmp_path):
    v, n = _sample(40, np.ones(8), 0)
    history = StatsHistory(tmp_path)
    for run_id, collection in (("r1", "images"), ("r2", "images_v2"), ("r3", "thumbs")):
        history.append(run_id, "db", collection, "m", "t", EmbeddingStats.of(v, n))
    with history.path.open("a") as f:
        f.write('{"run_id": "torn", "stats": {"vec_sum": [0.1')  # a crash mid-append: part of a vector
    assert history.drop_moments("images_v2", "dropped by erasure er_1") == 2  # the live name and its versions
    text = history.path.read_text()
    entries = [json.loads(line) for line in text.splitlines()]
    assert [e["run_id"] for e in entries] == ["r1", "r2", "r3"] and "torn" not in text
    assert [("vec_sum" in e["stats"], e.get("moments_withheld")) for e in entries] == [
        (False, "dropped by erasure er_1"), (False, "dropped by erasure er_1"), (True, None)]
    assert history.last("db", "images", "m") is None and history.last("db", "thumbs", "m")[0] == "r3"
    assert history.drop_moments("images", "again") == 0 and history.path.read_text() == text  # nothing to rewrite
    assert history.path.stat().st_mode & 0o777 == 0o600


def test_nan_and_inf_embeddings_are_rejected_rows_never_vectors(corpus_dir, tiny_encoder):
    from PIL import Image

    actor = EmbedImages(*TINY, fingerprint=tiny_encoder.fingerprint, stats=RunMetrics(tiny_encoder.dim))
    encode = actor.encoder.model.encode_image

    def faulty(x):  # the model misbehaves on two inputs of the batch
        out = encode(x)
        out[1] = float("nan")
        out[3, 0] = float("inf")
        return out

    actor.encoder.model.encode_image = faulty
    images = sorted(corpus_dir.glob("*.png"))[:6]
    rows = [{"source": str(p), "id": str(i), "tenant": "t", "subject": "s", "content_hash": "h", "meta": "{}",
             "status": OK, "reason": None, "pixels": tiny_encoder.prepare(Image.open(p).convert("RGB")).tobytes()}
            for i, p in enumerate(images)]
    out = actor(table(rows, [("pixels", pa.binary())])).to_pylist()
    assert [r["status"] for r in out] == [OK, REJECTED, OK, REJECTED, OK, OK]
    assert out[1]["reason"] == out[3]["reason"] == NON_FINITE
    for r in out:
        v = np.asarray(r["vector"])
        assert np.isfinite(v).all()
        assert (abs(np.linalg.norm(v) - 1) < 1e-5) if r["status"] == OK else not v.any()
    assert (actor.stats.embedding.count, actor.stats.embedding.nonfinite) == (4, 2)
    assert actor.stats.stages["embed"]["rows"] == 6 and actor.stats.stages["embed"]["count"] == 1
