"""Where an embed job's rows are looked up and written, by backend: through one store actor
on milvus-lite, from the tasks themselves on a Milvus server (pixlake/platform/pipeline/job_store.py).
Either way the report counts exactly when identical images sit in different blocks, and a
task lost right after it claimed its rows (claims.py) costs no row."""

from __future__ import annotations

import json
from collections import Counter
import shutil
import subprocess
import sys

import pytest
import ray

from pixlake.platform.corpus import write_corpus
from pixlake.platform.pipeline.claims import shard_count
from pixlake.platform.governance.keys import load_master_key
from pixlake.platform.pipeline.job import run_embed_job
from pixlake.platform.pipeline.skip import FAULT_ENV
from pixlake.platform.settings import load_settings
from pixlake.platform.store import MilvusStore
from tests.conftest import TINY, TINY_BETA, subprocess_env

DISTINCT = 48


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    """48 distinct images, each under two names: the second copies fall in the second block
    (image folders are read in blocks of 64 files), so repeats cross blocks."""
    out = tmp_path_factory.mktemp("twice")
    images = write_corpus(out / "c", DISTINCT, seed=5)
    folder = out / "images"
    folder.mkdir()
    for p in images:
        for copy in ("a", "b"):
            shutil.copy(p, folder / f"{copy}_{p.name}")
    return folder


def _settings(db: str, tmp_path, collection: str, **job):
    keys = tmp_path / "keys"
    load_master_key(keys, create=True)  # an operator-provided key (a server never creates one)
    return load_settings(overrides={
        "store": {"db": db, "collection": collection},
        "encoder": {"model": TINY[0], "pretrained": TINY[1]},
        "job": {"batch_size": 8, "write_batch_rows": 16, **job},
        "governance": {"beta": TINY_BETA, "key_dir": str(keys)},
    })


def _actor_classes() -> Counter:
    """Actors this Ray has run, dead ones included (GCS's actor table), by class name."""
    import ray._private.state

    return Counter(a["ActorClassName"] for a in ray._private.state.actors().values())


def _ids(db: str, collection: str) -> list[str]:
    with MilvusStore(db, collection) as store:
        return [r["id"] for r in store.query("", ["id"])]


@pytest.mark.parametrize("backend", ["lite", "server", "server with job.store_actor"])
def test_repeats_across_blocks_are_counted_exactly_on_either_path(backend, ray_session, milvus_server, twice, tmp_path):
    db = str(tmp_path / "p.db") if backend == "lite" else milvus_server
    collection = f"twice_{len(backend)}"
    before = _actor_classes()
    report = run_embed_job(str(twice), _settings(db, tmp_path, collection, store_actor=backend != "server"))
    started = _actor_classes() - before
    assert (report.embedded, report.skipped, report.rejected) == (DISTINCT, DISTINCT, 0), report
    ids = _ids(db, collection)
    assert len(ids) == len(set(ids)) == report.collection_count == DISTINCT
    if backend != "server":  # one store actor: it makes each id's check-and-write atomic
        assert "StoreOwner" in started and "ClaimShard" not in started, started
    else:  # no store actor: the tasks write; the claims are sharded
        assert "StoreOwner" not in started and "ClaimShard" in started, started
    # Where the tasks write, no one actor hears of every batch: the metrics are sharded like the claims.
    shards = shard_count(int(ray.cluster_resources()["CPU"]))
    assert started["StatsOwner"] == (shards if backend == "server" else 1) and shards >= 2, started
    assert started["GovernanceOwner"] == 1, started


def test_a_task_lost_right_after_claiming_costs_no_row(milvus_server, twice, tmp_path):
    """The skip task dies (os._exit) once, right after its claims were recorded: Ray runs it
    again under the same task id, so it still owns its rows and they are written."""
    fault = tmp_path / "fault-fired"
    keys = tmp_path / "keys"
    load_master_key(keys, create=True)
    env = subprocess_env(**{FAULT_ENV: str(fault), "PIXLAKE_GOVERNANCE__KEY_DIR": str(keys),
                            "PIXLAKE_GOVERNANCE__BETA": str(TINY_BETA)})
    done = subprocess.run(
        [sys.executable, "-m", "pixlake.jobs.embed", str(twice), "--db", milvus_server, "--collection", "lost_task",
         "--model", TINY[0], "--pretrained", TINY[1], "--json"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert fault.exists(), "the fault never fired: no task claimed"
    report = json.loads(done.stdout)
    assert (report["embedded"], report["skipped"]) == (DISTINCT, DISTINCT), report
    ids = _ids(milvus_server, "lost_task")
    assert len(ids) == len(set(ids)) == DISTINCT
