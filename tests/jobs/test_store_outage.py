"""A real Milvus server SIGKILLed during an embed job's write stage: the job retries with
backoff and completes with exact counts when the server comes back; when it stays down past
``store.retry_deadline_s`` the job fails with a clear message and a re-run completes."""

from __future__ import annotations

import threading
import time

import pytest

from pixlake.platform.corpus import MANIFEST, write_corpus
from pixlake.platform.errors import StoreError
from pixlake.platform.pipeline.job import run_embed_job
from pixlake.platform.store import MilvusStore
from pixlake.platform.governance.keys import load_master_key
from pixlake.platform.settings import load_settings
from tests.conftest import TINY, TINY_BETA, kill_milvus_server

N = 400


@pytest.fixture
def server(milvus_server_process, tmp_path_factory):
    """The session's server, which these tests kill. Each test ends by replacing it with a
    fresh one on the same port: on a server that had been killed and restarted, the later
    erasure tests took 361 s instead of 71 s (their compaction steps waited out the 120 s
    compaction timeout, it seems), and the other tests must not inherit that."""
    yield milvus_server_process
    if milvus_server_process.running:
        kill_milvus_server(milvus_server_process)
    milvus_server_process.set_base_dir(str(tmp_path_factory.mktemp("milvus-server")))
    milvus_server_process.start()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("outage-corpus")
    write_corpus(out, N, seed=11, holdout=1.0)
    return str(out / MANIFEST)


def _settings(server, tmp_path, collection: str, deadline_s: float):
    keys = tmp_path / "keys"
    load_master_key(keys, create=True)  # an operator-provided key file (a server never creates one)
    return load_settings(overrides={
        "store": {"db": f"http://127.0.0.1:{server.listen_port}", "collection": collection,
                  "retry_deadline_s": deadline_s},
        "encoder": {"model": TINY[0], "pretrained": TINY[1]},
        # small writes: the write stage makes many calls, so the kill lands between two
        "job": {"batch_size": 8, "write_batch_rows": 16},
        "governance": {"beta": TINY_BETA, "key_dir": str(keys)},
    })


def _rows(uri: str, collection: str) -> int:
    """Rows a plain client sees, or -1 while the collection does not exist yet."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri)
    try:
        if not client.has_collection(collection):
            return -1
        return int(client.query(collection, filter="", output_fields=["count(*)"], consistency_level="Strong")[0]["count(*)"])
    finally:
        client.close()


def _kill_once_writing(server, uri: str, collection: str, job_done: threading.Event, seen: dict,
                       down_s: float | None) -> None:
    """Kill the server once the job's first rows have landed (the write stage is running),
    then restart it after ``down_s`` seconds (never, when None, until the test does)."""
    while not job_done.is_set():
        try:
            rows = _rows(uri, collection)
        except Exception:  # noqa: BLE001 - the server may be busy; look again
            rows = -1
        if rows > 0:
            seen["rows_at_kill"] = rows
            kill_milvus_server(server)
            seen["job_running_at_kill"] = not job_done.is_set()
            if down_s is not None:
                time.sleep(down_s)
                server.start()
                seen["restarted"] = True
            return
        time.sleep(0.05)


def _ids(uri: str, collection: str) -> list[str]:
    """Every stored id (through the store: it waits for a restarted server to reload the collection)."""
    store = MilvusStore(uri, collection)
    try:
        return [r["id"] for r in store.query("", ["id"])]
    finally:
        store.close()


def test_a_server_restarted_mid_write_costs_retries_not_rows(ray_session, server, corpus, tmp_path):
    uri, collection = f"http://127.0.0.1:{server.listen_port}", "outage_restart"
    settings = _settings(server, tmp_path, collection, deadline_s=120)
    done, seen = threading.Event(), {}
    killer = threading.Thread(target=_kill_once_writing, args=(server, uri, collection, done, seen, 2.0), daemon=True)
    killer.start()
    try:
        report = run_embed_job(corpus, settings)
    finally:
        done.set()
        killer.join()
    assert seen.get("job_running_at_kill") and seen.get("restarted"), seen
    assert 0 < seen["rows_at_kill"] < N, "the kill did not land inside the write stage"
    assert report.store_retries > 0, "no store call saw the server down"
    assert (report.embedded, report.rejected, report.collection_count) == (N, 0, N)
    ids = _ids(uri, collection)
    assert len(ids) == len(set(ids)) == N


def test_a_server_down_past_the_deadline_fails_clearly_and_a_rerun_completes(ray_session, server, corpus, tmp_path):
    uri, collection = f"http://127.0.0.1:{server.listen_port}", "outage_deadline"
    settings = _settings(server, tmp_path, collection, deadline_s=3)
    done, seen = threading.Event(), {}
    killer = threading.Thread(target=_kill_once_writing, args=(server, uri, collection, done, seen, None), daemon=True)
    killer.start()
    try:
        with pytest.raises(StoreError, match=r"Milvus server at .* unreachable for 3 s .*run the job again"):
            run_embed_job(corpus, settings)
    finally:
        done.set()
        killer.join()
        if not server.running:
            server.start()
    assert seen.get("job_running_at_kill"), seen
    kept = len(_ids(uri, collection))  # what the failed run wrote before the server went away
    assert 0 < seen["rows_at_kill"] <= kept < N
    again = run_embed_job(corpus, settings)
    assert (again.embedded, again.skipped, again.collection_count) == (N - kept, kept, N)
    ids = _ids(uri, collection)
    assert len(ids) == len(set(ids)) == N


def test_a_compaction_started_while_the_server_is_down_waits_for_it_and_completes(server, tmp_path):
    """An erasure's compact step during an outage: retried until the server is back, never
    recorded as done-without-compacting nor raised as a raw client error."""
    from pixlake.platform.store import build_filter
    from tests.platform.test_store_conformance import DIM, MODEL, make_rows

    uri, collection = f"http://127.0.0.1:{server.listen_port}", "outage_compact"
    store = MilvusStore(uri, collection, retry_deadline_s=120)
    try:
        store.ensure_collection(DIM, MODEL)
        rows = make_rows(8)
        store.upsert(rows)
        store.delete(filter=build_filter(tenant=rows[0]["tenant"], subject=rows[0]["subject"]))
        left = store.count()
        kill_milvus_server(server)
        restart = threading.Timer(3.0, server.start)
        restart.start()
        try:
            outcome = store.compact()
        finally:
            restart.join()
        assert outcome == {collection: "done"}
        assert store.retry_count() > 0, "compact never saw the server down"
        assert store.count() == left < len(rows)
    finally:
        store.close()
