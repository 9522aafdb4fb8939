"""The governance facade: key sources per deployment, the write path's deny-list re-check,
and what reveal gives back (exact vectors; nothing of a denied subject)."""

from __future__ import annotations

import numpy as np
import pytest

from pixlake.platform import records as R
from pixlake.platform.errors import ConfigError
from pixlake.platform.governance.service import Governance, governance_dir, protect_rows
from pixlake.platform.pipeline.sink import MilvusDatasink
from pixlake.platform.settings import load_settings
from pixlake.platform.store import MilvusStore


pytestmark = pytest.mark.usefixtures("no_master_key_env")


def _settings(db, **governance):
    return load_settings(overrides={"store": {"db": str(db), "collection": "images"}, "governance": governance})


def _records(governance: Governance, subjects: list[str], dim: int = 8) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i, subject in enumerate(subjects):
        v = rng.normal(size=dim)
        pseudonym = governance.pseudonym("t", subject)
        out.append({R.ID: R.row_id("t", pseudonym, f"h{i}"), R.TENANT: "t", R.SUBJECT: pseudonym,
                    R.CONTENT_HASH: f"h{i}", R.SOURCE: f"/img/{i}.png", R.MODEL: "m", R.META: {"n": i, "secret": "x"},
                    R.NONCE: "", R.KEY_ID: "", R.VECTOR: (v / np.linalg.norm(v)).tolist()})
    return out


def test_a_server_deployment_without_a_key_source_refuses_to_start(tmp_path):
    with pytest.raises(ConfigError, match="governance.key_dir"):
        Governance.open(_settings("http://127.0.0.1:19530"))
    with pytest.raises(ConfigError, match="PIXLAKE_MASTER_KEY"):  # a directory, but no master key in it
        Governance.open(_settings("http://127.0.0.1:19530", key_dir=str(tmp_path / "keys")))
    assert not (tmp_path / "keys" / "master.key").exists()  # never created for a server


def test_pseudonyms_hide_the_subject_and_differ_per_tenant(tmp_path):
    governance = Governance.open(_settings(tmp_path / "p.db"))
    try:
        p = governance.pseudonym("acme", "alice@example.com")
        assert p == governance.pseudonym("acme", "alice@example.com") and len(p) == 32 and "alice" not in p
        assert p != governance.pseudonym("globex", "alice@example.com")
        assert int(p, 16) >= 0  # hex: safe in a filter expression
    finally:
        governance.close()
    other = Governance.open(_settings(tmp_path / "q.db"))  # another key store: another pseudonym
    try:
        assert other.pseudonym("acme", "alice@example.com") != p
    finally:
        other.close()


def test_the_embedded_default_creates_a_master_key_beside_the_db(tmp_path):
    governance = Governance.open(_settings(tmp_path / "p.db"))
    governance.close()
    key = governance_dir(_settings(tmp_path / "p.db")) / "master.key"
    assert key.parent == tmp_path / "p.governance" and key.stat().st_mode & 0o777 == 0o600


def test_protect_then_reveal_is_exact_and_seals_sensitive_metadata(tmp_path):
    governance = Governance.open(_settings(tmp_path / "p.db", sensitive_meta=["secret"]))
    try:
        records = _records(governance, ["a", "b", "c"])
        version, cipher = governance.cipher("t", 8)
        keys = governance.data_keys("t", [r[R.SUBJECT] for r in records])
        stored = protect_rows(records, version, cipher, keys, ["secret"])
        assert all("secret" not in r[R.META] and r[R.META]["n"] == i for i, r in enumerate(stored))
        assert all(r[R.SOURCE].startswith("v1.") for r in stored)
        revealed = governance.reveal("t", stored)
        for before, after in zip(records, revealed):
            assert np.allclose(before[R.VECTOR], after[R.VECTOR], atol=1e-5)
            assert after[R.SOURCE] == before[R.SOURCE] and after[R.META] == before[R.META]
        # a denied subject's rows are dropped, whatever the cache holds
        governance.ledger.deny("t", records[0][R.SUBJECT], "er_test")
        assert [r[R.ID] for r in governance.reveal("t", stored)] == [r[R.ID] for r in records[1:]]
        assert all(k[1] != stored[0][R.KEY_ID] for k in governance._data_keys)  # forgotten
    finally:
        governance.close()


def test_a_write_that_races_an_erasure_is_taken_back(tmp_path):
    """The erasure denies the subject after the sink's first check but before its re-check:
    the rows it just wrote must go again (the erasure's own delete may already have run)."""
    settings = _settings(tmp_path / "p.db")
    governance = Governance.open(settings)
    store = MilvusStore(settings.store.db, "images")
    try:
        store.ensure_collection(8, "m")
        records = _records(governance, ["racer", "racer", "bystander"])
        racer = records[0][R.SUBJECT]

        class ErasureLandsDuringTheWrite:
            calls = 0

            def denied(self, tenant, pseudonyms):
                self.calls += 1
                if self.calls == 2:  # the erasure denied while the write ran: seen at the re-check
                    governance.ledger.deny(tenant, racer, "er_race")
                return governance.denied(tenant, pseudonyms)

        sink = MilvusDatasink(store, "m", 10, ErasureLandsDuringTheWrite())
        result = {"embedded": 0, "skipped": 0, "erased": 0, "rejected": 0, "rejections": []}
        sink._flush(records, result)
        assert store.count(f'{R.SUBJECT} == "{racer}"') == 0 and store.count() == 1
        assert result["embedded"] == 1 and result["erased"] == 2
    finally:
        store.close()
        governance.close()


def test_an_erasure_taken_by_another_process_evicts_this_ones_cached_data_keys(tmp_path):
    """Two Serve replicas hold their own Governance over one directory: a subject erased
    through one must not leave its data key readable in the other's memory."""
    settings = _settings(tmp_path / "p.db")
    replica, other = Governance.open(settings), Governance.open(settings)
    try:
        records = _records(replica, ["a", "b"])
        version, cipher = replica.cipher("t", 8)
        stored = protect_rows(records, version, cipher, replica.data_keys("t", [r[R.SUBJECT] for r in records]), [])
        replica.reveal("t", stored)
        replica.reveal("u", [])  # nothing of another tenant to keep
        assert replica.cached_key_count("t") == 2
        assert replica.sync_erasures() == set()  # nothing erased yet: the cache stays
        assert replica.cached_key_count("t") == 2
        other.ledger.deny("t", records[0][R.SUBJECT], "er_elsewhere")  # the erasure's first step, elsewhere
        assert replica.sync_erasures() == {"t"}
        assert replica.cached_key_count("t") == 0
        assert replica.sync_erasures() == set()  # seen once
        # the other subject still reads (its key comes back from the key store)
        assert [r[R.ID] for r in replica.reveal("t", stored)] == [stored[1][R.ID]]
    finally:
        replica.close()
        other.close()
