"""Model lifecycle on real milvus-lite and real Ray: reindex builds the next version (rebuilt
from decrypted rows, or re-embedded with a new encoder), the evaluation gate decides, the
live alias switches atomically and rolls back, and a serving reader answers every query
while it does."""

from __future__ import annotations

import threading
import time

import pytest

from pixlake.platform.corpus import MANIFEST, write_corpus
from pixlake.platform.encoder import load_encoder
from pixlake.platform.errors import ConfigError, StoreError
from pixlake.platform.lifecycle import LiveCollection, promote, resolve, rollback, versions
from pixlake.platform.pipeline.job import run_embed_job
from pixlake.platform.query import open_collection
from pixlake.platform.lifecycle.reindex import gate, reindex
from pixlake.platform.store import MilvusStore
from tests.conftest import TINY, TINY_BETA, tiny_settings

N = 40


@pytest.fixture
def live(ray_session, tmp_path):
    """A collection ``images`` embedded by the tiny encoder, and its settings and manifest."""
    write_corpus(tmp_path / "c", N, seed=3, holdout=0.3)
    manifest = str(tmp_path / "c" / MANIFEST)
    settings = tiny_settings(tmp_path / "l.db")
    assert run_embed_job(manifest, settings).collection_count == N
    return settings, manifest


def _candidate(settings, **governance):
    return settings.model_copy(update={"governance": settings.governance.model_copy(update=governance)})


def _until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_rebuild_is_gated_promoted_and_rolled_back_with_no_failed_query(live):
    settings, manifest = live
    candidate = _candidate(settings, beta=TINY_BETA * 2)
    result = reindex(settings, candidate, eval_manifest=manifest, max_recall_drop=1.0, promote=False)
    assert (result["mode"], result["from"], result["to"], result["rows"]) == ("rebuild", "images", "images_v2", N)
    assert result["gate"]["passed"] and not result["promoted"] and result["switch"] is None
    evaluation = result["evaluation"]
    for kind in ("text_to_image", "image_to_image"):
        assert set(evaluation["current"][kind]) >= {"recall@10"}
    # the candidate's scratch was rebuilt from the current one's: the whole holdout, same queries
    assert evaluation["candidate"]["rows"] == evaluation["current"]["rows"] > 0
    assert evaluation["candidate"]["queries"] == evaluation["current"]["queries"]
    store = MilvusStore(settings.store.db, "images")
    try:
        assert not [name for name in store.collections() if "_eval_" in name], "scratch collections left behind"
    finally:
        store.close()
    fingerprint = load_encoder(*TINY, device="cpu").fingerprint
    reader = LiveCollection(open_collection(settings, fingerprint))
    query = load_encoder(*TINY, device="cpu").embed_texts(["a red star"])[0]
    before = [h["id"] for h in reader.search(query, 5, "default")]
    failures, answers, stop = [], [], threading.Event()

    def search_throughout():
        while not stop.is_set():
            try:
                answers.append((reader.store.collection, [h["id"] for h in reader.search(query, 5, "default")]))
            except Exception as e:  # noqa: BLE001 - any failure is what this test counts
                failures.append(repr(e))

    threads = [threading.Thread(target=search_throughout) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        store = MilvusStore(settings.store.db, "images")
        try:
            # the first promotion adopts the plain collection as images_v1, then switches
            assert promote(store, "images", "images_v2") == {"collection": "images", "from": "images_v1", "to": "images_v2"}
            _until(lambda: reader.store.collection == "images_v2")
            time.sleep(0.3)
            assert rollback(store, "images") == {"collection": "images", "from": "images_v2", "to": "images_v1"}
            _until(lambda: reader.store.collection == "images_v1")
            time.sleep(0.3)
            assert versions(store, "images") == ["images_v1", "images_v2"] and resolve(store, "images") == "images_v1"
        finally:
            store.close()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    served = {version for version, _ in answers}
    assert {"images", "images_v1", "images_v2"} <= served, served
    # the rebuild kept every vector: each version answers the same hits
    assert all(ids == before for _, ids in answers), {tuple(ids) for _, ids in answers}
    assert reader.describe()["version"] == "images_v1"
    reader.close()


def test_a_new_encoder_is_re_embedded_and_a_reader_of_the_old_one_stays_on_its_version(live, tmp_path):
    import torch

    settings, manifest = live
    tiny = load_encoder(*TINY, device="cpu")
    checkpoint = tmp_path / "tiny-tuned.pt"  # "fine-tuned": the same architecture, other weights
    torch.manual_seed(1)
    torch.save({k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                for k, v in tiny.model.state_dict().items()}, checkpoint)
    candidate = settings.model_copy(update={"encoder": settings.encoder.model_copy(update={"pretrained": str(checkpoint)})})
    with pytest.raises(ConfigError, match="SOURCE"):
        reindex(settings, candidate, eval_manifest=manifest)
    reader = None
    result = reindex(settings, candidate, source=manifest, eval_manifest=manifest, max_recall_drop=1.0)
    assert result["mode"] == "re-embed" and result["model_to"] != result["model_from"] == tiny.fingerprint
    assert result["promoted"] and result["rows"] == N and result["switch"]["to"] == "images_v2"
    store = MilvusStore(settings.store.db, "images")
    try:
        assert store.model() == result["model_to"]  # the live name now answers with the new encoder's rows
        reader = LiveCollection(open_collection(settings.model_copy(
            update={"store": settings.store.model_copy(update={"collection": "images_v1"})}), tiny.fingerprint))
        reader.live = "images"  # a replica opened on v1 before the switch, serving the live name
        reader.follow(force=True)
        assert reader.store.collection == "images_v1" and reader.stale == "images_v2"
        assert reader.search(tiny.embed_texts(["a red star"])[0], 3, "default")
        # a query encoder of the old model is refused on the live name now
        with pytest.raises(StoreError, match="holds embeddings of"):
            open_collection(settings, tiny.fingerprint)
    finally:
        if reader is not None:
            reader.close()
        store.close()


def test_the_gate_refuses_a_candidate_that_loses_recall_and_reindex_refuses_what_it_cannot_do(tmp_path):
    current = {"text_to_image": {"recall@10": 0.80}, "image_to_image": {"recall@10": 0.90}}
    worse = {"text_to_image": {"recall@10": 0.78}, "image_to_image": {"recall@10": 0.95}}
    verdict = gate(current, worse, 0.01)
    assert not verdict["passed"] and verdict["by_query_type"]["text_to_image"]["change"] == -0.02
    assert gate(current, worse, 0.05)["passed"]
    # A real refused gate, end to end (built, evaluated, not switched, exit 1):
    # tests/e2e/test_reindex_cli.py::test_reindex_refusals_and_exit_codes.
    settings = tiny_settings(tmp_path / "none.db")
    with pytest.raises(ConfigError, match="nothing changes"):
        reindex(settings, settings, eval_manifest="holdout.parquet")
    with pytest.raises(ConfigError, match="--eval"):
        reindex(settings, _candidate(settings, beta=0.2))
    with pytest.raises(StoreError, match="no collection images"):
        reindex(settings, _candidate(settings, beta=0.2), eval_manifest="holdout.parquet")
    store = MilvusStore(settings.store.db, "images")
    try:
        with pytest.raises(StoreError, match="not a live alias"):
            rollback(store, "images")
        with pytest.raises(StoreError, match="no such pixlake collection"):
            promote(store, "images", "images_v9")
    finally:
        store.close()
