"""The run's metrics merge across shards exactly as one RunMetrics would have counted them."""

from __future__ import annotations

import numpy as np

from pixlake.platform.drift import EmbeddingStats
from pixlake.platform.pipeline.run_metrics import MetricsShards, RunMetrics


def _batch(dim: int, seed: int, n: int) -> EmbeddingStats:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return EmbeddingStats.of(v / np.linalg.norm(v, axis=1, keepdims=True), np.linalg.norm(v, axis=1))


def test_merged_shards_equal_one_metrics_object():
    dim, calls = 8, [("load", 0.002, 128), ("embed", 0.3, 64), ("embed", 7.0, 64), ("write", 0.04, 512), ("load", 0.2, 5)]
    one, shards = RunMetrics(dim), [RunMetrics(dim) for _ in range(3)]
    for i, (stage, seconds, rows) in enumerate(calls):
        emb = _batch(dim, i, rows) if stage == "embed" else None
        one.observe_stage(stage, seconds, rows, emb)
        shards[i % 3].observe_stage(stage, seconds, rows, emb)
    one.count_store_retries(2)
    shards[2].count_store_retries(2)
    merged = RunMetrics(dim)
    for s in shards:
        merged.merge(s)
    assert merged.stages == one.stages and merged.store_retries == 2
    assert merged.embedding.count == one.embedding.count == 128
    np.testing.assert_allclose(merged.embedding.vec_sum, one.embedding.vec_sum, rtol=1e-6)
    assert merged.first_done == {stage: min(s.first_done[stage] for s in shards if stage in s.first_done)
                                 for stage in one.first_done}


class _Local:
    """A shard reached in-process (the job reaches each through an actor proxy)."""

    def __init__(self, dim):
        self.m, self.closed = RunMetrics(dim), False

    def __getattr__(self, name):
        return getattr(self.m, name)

    def get(self):  # as through Ray: a copy whose arrays are read-only
        import copy

        c = copy.deepcopy(self.m)
        c.embedding.vec_sum.setflags(write=False)
        c.embedding.vec_sqsum.setflags(write=False)
        return c

    def shutdown(self):
        self.closed = True


def test_observations_spread_over_shards_and_read_back_whole():
    locals_ = [_Local(4) for _ in range(2)]
    shards = MetricsShards(locals_)
    for i in range(200):
        shards.observe_stage("decode", 0.01, 10, None)
        shards.observe_stage("embed", 0.1, 3, _batch(4, i, 3))
    assert shards.rows("decode") == 2000 and shards.get().embedding.count == 600
    assert all(l.m.rows("decode") > 0 for l in locals_)  # both shards were told
    assert shards.get().stages["embed"]["count"] == 200
    shards.shutdown()
    assert all(l.closed for l in locals_)
