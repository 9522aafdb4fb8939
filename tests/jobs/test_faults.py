"""Faults injected for real into a running embed job: the job completes with exactly one row
per valid input. (A killed driver, and a kill right after success: tests/e2e/test_embed_cli.py.)"""

from __future__ import annotations

import os
import signal
import threading
import time

from pixlake.platform.corpus import MANIFEST, write_corpus
from pixlake.platform.pipeline.job import run_embed_job
from pixlake.platform.store import MilvusStore
from tests.conftest import descendant_pids, tiny_settings

ENCODER_ACTOR = "MapWorker(MapBatches(EmbedImages))"


def _kill_encoder_once(killed: list, restarted: list, stop: threading.Event) -> None:
    """SIGKILL this job's encoder actor once it has been up a moment, then watch for the
    replacement Ray starts (proof the job still needed an encoder: the kill was mid-job).
    An earlier job's encoder may still be exiting: only processes new since the start count."""
    stale = set(descendant_pids(f"ray::{ENCODER_ACTOR}"))
    while not stop.is_set():
        pids = [p for p in descendant_pids(f"ray::{ENCODER_ACTOR}") if p not in stale and p not in killed]
        if pids and not killed:
            time.sleep(1.0)  # let it embed a few batches first
            try:
                os.kill(pids[0], signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(pids[0])
        elif pids:
            restarted.append(pids[0])
            return
        time.sleep(0.1)


def test_an_encoder_actor_killed_mid_job_loses_and_duplicates_nothing(ray_session, tmp_path):
    write_corpus(tmp_path / "c", 400, seed=5, holdout=1.0)
    db = tmp_path / "k.db"
    killed, restarted, stop = [], [], threading.Event()
    killer = threading.Thread(target=_kill_encoder_once, args=(killed, restarted, stop), daemon=True)
    killer.start()
    try:
        report = run_embed_job(str(tmp_path / "c" / MANIFEST), tiny_settings(db, batch_size=8))
    finally:
        stop.set()
        killer.join()
    assert killed, "the encoder actor was never seen alive"
    assert restarted, "no encoder came back after the kill: it was not mid-job"
    assert report.rejected == 0 and report.embedded == 400 and report.collection_count == 400
    store = MilvusStore(str(db), "images")
    try:
        ids = [r["id"] for r in store.query("", ["id"])]
        assert len(ids) == len(set(ids)) == 400
    finally:
        store.close()

