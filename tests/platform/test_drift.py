"""Embedding statistics, drift scores, the run history, and non-finite embeddings rejected."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pixlake.platform.drift import NON_FINITE, EmbeddingStats, StatsHistory, drift
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
