"""What an erasure and an export promise, attacked directly on real milvus-lite (no Ray):
a purge never deletes a file another row still points to, a second request for a subject
whose erasure is running joins it instead of running every step again, and an export is
never readable by anyone but its owner."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixlake.platform import records as R
from pixlake.platform.governance.cipher import keyed_hash
from pixlake.platform.compliance.erasure import STEPS, Eraser
from pixlake.platform.governance.service import Governance, protect_rows
from pixlake.platform.images import content_hash
from pixlake.platform.settings import load_settings
from pixlake.platform.store import MilvusStore, build_filter

DIM = 8


pytestmark = pytest.mark.usefixtures("no_master_key_env")


def _settings(db: Path, **governance):
    return load_settings(overrides={"store": {"db": str(db), "collection": "images"}, "governance": governance})


def _image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def _put(store: MilvusStore, governance: Governance, tenant: str, subject: str, path: Path) -> None:
    """One encrypted row, identified as the embed job's load stage does (keyed content hash)."""
    key = governance.identity_key(tenant)
    digest = keyed_hash(key, content_hash(path.read_bytes()).encode(), "content")
    pseudonym = governance.pseudonym(tenant, subject)
    v = np.random.default_rng(len(str(path)) + len(subject)).normal(size=DIM)
    row = {R.ID: R.row_id(tenant, pseudonym, digest), R.TENANT: tenant, R.SUBJECT: pseudonym, R.CONTENT_HASH: digest,
           R.SOURCE: str(path), R.MODEL: "m", R.META: {}, R.NONCE: "", R.KEY_ID: "",
           R.VECTOR: (v / np.linalg.norm(v)).tolist()}
    version, cipher = governance.cipher(tenant, DIM)
    store.ensure_collection(DIM, "m")
    store.upsert(protect_rows([row], version, cipher, governance.data_keys(tenant, [pseudonym]), []))


def _sources(store: MilvusStore, governance: Governance, tenant: str, subject: str) -> list[str]:
    """The opened sources of a subject's rows in every collection."""
    expr = build_filter(tenant, subject=governance.pseudonym(tenant, subject))
    return sorted(r[R.SOURCE] for s in store.each_collection()
                  for r in governance.reveal(tenant, s.query(expr, ["*"])))


def test_a_purge_never_deletes_a_file_another_row_of_any_tenant_points_to(tmp_path):
    owned = tmp_path / "owned"
    shared = _image(owned / "shared.png", 1)  # alice, bob (acme) and carol (globex)
    cross = _image(owned / "cross.png", 2)  # alice (acme) and dave (globex), in another collection
    twin_a, twin_b = _image(owned / "twin_a.png", 3), owned / "twin_b.png"  # the same bytes at two paths
    twin_b.write_bytes(twin_a.read_bytes())
    changed = _image(owned / "changed.png", 4)  # alice, then rewritten, then erin (acme): other bytes, same path
    own = _image(owned / "own.png", 5)  # alice's alone
    settings = _settings(tmp_path / "p.db", owned_sources=[str(owned)])
    governance = Governance.open(settings)
    store = MilvusStore(settings.store.db, "images")
    other = store.for_collection("other")
    try:
        for tenant, subject, path, where in [
            ("acme", "alice", shared, store), ("acme", "bob", shared, store), ("globex", "carol", shared, store),
            ("acme", "alice", cross, store), ("globex", "dave", cross, other),
            ("acme", "alice", twin_a, store), ("acme", "bob", twin_b, store),
            ("acme", "alice", changed, store), ("acme", "alice", own, store),
        ]:
            _put(where, governance, tenant, subject, path)
        _image(changed, 6)
        _put(store, governance, "acme", "erin", changed)

        eraser = Eraser(store, governance, [owned])
        receipt = eraser.run(eraser.start("acme", "alice", purge_sources=True)[0])
        assert receipt["status"] == "completed" and receipt["verified"]
        assert {s["name"]: s["count"] for s in receipt["steps"]}["purge_sources"] == 1
        assert not own.exists()  # only alice used it
        assert all(p.exists() for p in (shared, cross, twin_a, twin_b, changed))
        # every other row still has its source
        assert _sources(store, governance, "acme", "alice") == []
        for tenant, subject, paths in [("acme", "bob", [shared, twin_b]), ("globex", "carol", [shared]),
                                       ("globex", "dave", [cross]), ("acme", "erin", [changed])]:
            assert _sources(store, governance, tenant, subject) == sorted(map(str, paths)), subject
            assert all(Path(p).is_file() for p in paths)
        assert oct(eraser._plan_path(receipt["erasure_id"]).parent.stat().st_mode & 0o777) == oct(0o700)
    finally:
        other.close()
        store.close()
        governance.close()


def test_a_second_request_while_the_erasure_runs_joins_it(tmp_path, monkeypatch):
    """Two requests for one subject on a Searcher (the Serve replica's class, called as a plain
    object) while the first is held inside its compaction: one id, one run, one compaction."""
    from pixlake.serve.deployments import Searcher

    settings = _settings(tmp_path / "p.db")
    governance = Governance.open(settings)
    store = MilvusStore(settings.store.db, "images")
    for i in range(3):
        _put(store, governance, "acme", "alice", _image(tmp_path / f"a{i}.png", i))
    _put(store, governance, "acme", "bob", _image(tmp_path / "b.png", 9))
    store.close()
    governance.close()

    compactions, release = [], threading.Event()
    compact = MilvusStore.compact

    def held_compact(self, *args, **kwargs):  # the real compaction; the first one waits for the test
        compactions.append(self.collection)
        if len(compactions) == 1:
            assert release.wait(300)
        return compact(self, *args, **kwargs)

    monkeypatch.setattr(MilvusStore, "compact", held_compact)
    searcher = Searcher.func_or_class(settings)
    try:
        first = searcher.start_erasure("acme", "alice")
        deadline = time.monotonic() + 300
        while not compactions and time.monotonic() < deadline:  # wait until it is inside compact
            time.sleep(0.05)
        assert compactions, "the erasure never reached its compaction"
        second = searcher.start_erasure("acme", "alice")
        # another process (pixlake erase) resuming the same id meanwhile leaves it to the running one
        other = Eraser(searcher.collection.store, searcher.collection.governance)
        assert other.run(first, wait=False)["status"] == "in_progress"
        release.set()
        receipt = searcher.erasure_receipt("acme", first)
        while receipt["status"] != "completed" and time.monotonic() < deadline:
            time.sleep(0.05)
            receipt = searcher.erasure_receipt("acme", first)
        assert second == first
        assert receipt["status"] == "completed" and receipt["verified"]
        assert [s["name"] for s in receipt["steps"]] == list(STEPS[:-1])  # each step once
        assert len(compactions) == 1
        events = [e["event"] for e in searcher.collection.governance.audit.events() if e.get("erasure_id") == first]
        assert events.count("erasure.compact") == 1 and events.count("erasure.delete") == 1
        assert searcher.collection.store.count() == 1  # bob's row
    finally:
        release.set()
        searcher.collection.close()


def test_an_export_is_written_0600_whatever_the_umask(tmp_path):
    from pixlake.jobs.export import main

    settings = _settings(tmp_path / "p.db")
    governance = Governance.open(settings)
    store = MilvusStore(settings.store.db, "images")
    _put(store, governance, "acme", "alice", _image(tmp_path / "a.png", 1))
    store.close()
    governance.close()
    out = tmp_path / "alice.json"
    out.write_text("an older export, world-readable\n")
    os.chmod(out, 0o644)
    old = os.umask(0)
    try:
        for target in (out, tmp_path / "new.json"):  # over an existing file, and a new one
            assert main(["--subject", "alice", "--tenant", "acme", "--db", str(tmp_path / "p.db"), "--out", str(target)]) == 0
            assert oct(target.stat().st_mode & 0o777) == oct(0o600)
            assert len(json.loads(target.read_text())["collections"]["images"]) == 1
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []
