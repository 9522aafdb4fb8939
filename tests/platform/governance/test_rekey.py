"""Key rotation never strands or loses rows: a writer racing the rotation, a crash between a
server's delete and insert, and searches while rows sit under two key versions."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pixlake.platform import records as R
from pixlake.platform.errors import GovernanceError
from pixlake.platform.governance.keys import load_master_key
from pixlake.platform.compliance.portability import Journal, reencrypt, rekey, stale_filter
from pixlake.platform.governance.service import Governance, protect_rows
from pixlake.platform.query import QueryCollection
from pixlake.platform.settings import load_settings
from pixlake.platform.store import FAULT_ENV, MilvusStore, literal
from tests.conftest import subprocess_env

DIM, MODEL, TENANT = 32, "pixlake-test:0123456789abcdef", "t"


pytestmark = pytest.mark.usefixtures("no_master_key_env")


def _vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _rows(governance: Governance, vectors: np.ndarray, first: int = 0, cipher=None) -> list[dict]:
    """Encrypted records of ``vectors`` (subject per 4 rows), under the current key or ``cipher`` = (version, cipher)."""
    records = []
    for i, v in enumerate(vectors, first):
        pseudonym = governance.pseudonym(TENANT, f"s{i // 4}")
        records.append({R.ID: R.row_id(TENANT, pseudonym, f"h{i}"), R.TENANT: TENANT, R.SUBJECT: pseudonym,
                        R.CONTENT_HASH: f"h{i}", R.SOURCE: f"/img/{i}.png", R.MODEL: MODEL, R.META: {"n": i},
                        R.NONCE: "", R.KEY_ID: "", R.VECTOR: v.tolist()})
    keys = governance.data_keys(TENANT, sorted({r[R.SUBJECT] for r in records}))
    version, vector_cipher = cipher or governance.cipher(TENANT, DIM)
    return protect_rows(records, version, vector_cipher, keys, ())


def _open(tmp_path: Path, db: str, collection: str = "images", **governance) -> tuple[MilvusStore, Governance]:
    settings = load_settings(overrides={"store": {"db": db, "collection": collection}, "governance": governance})
    store = MilvusStore.configured(settings.store)
    store.ensure_collection(DIM, MODEL)
    return store, Governance.open(settings)


def _stored(store: MilvusStore, governance: Governance) -> dict[int, dict]:
    """Every row, decrypted, by its index (meta n)."""
    rows = governance.reveal(TENANT, store.query("", (R.ID, R.SUBJECT, R.SOURCE, R.META, R.NONCE, R.KEY_ID, R.VECTOR)))
    return {r[R.META]["n"]: r for r in rows}


@pytest.fixture
def lite(tmp_path):
    store, governance = _open(tmp_path, str(tmp_path / "p.db"))
    yield store, governance
    store.close()
    governance.close()


def test_a_row_written_under_the_old_key_after_a_scan_is_rekeyed_before_the_old_key_is_retired(lite):
    store, governance = lite
    plain = _vectors(41, seed=1)
    store.upsert(_rows(governance, plain[:40]))
    in_flight = governance.cipher(TENANT, DIM)  # an embed batch that took version 1 before the rotation
    passes = []

    def after_pass(number: int, written: int) -> None:
        passes.append((number, written, governance.live_versions(TENANT)))
        if number == 1:  # the batch lands after the first pass scanned past it
            store.upsert(_rows(governance, plain[40:], first=40, cipher=in_flight))

    result = rekey(store, governance, TENANT, after_pass=after_pass)
    # pass 2 (a fresh Strong scan) finds the late row, pass 3 finds nothing; version 1
    # lived through every pass and was retired only after the clean one
    assert passes == [(1, 40, [1, 2]), (2, 1, [1, 2]), (3, 0, [1, 2])]
    assert result["retired"] == [1] and result["passes"] == 3 and result["rows"] == 41
    assert governance.live_versions(TENANT) == [2]
    stored = _stored(store, governance)
    assert sorted(stored) == list(range(41)) and all(r[R.NONCE].startswith("2:") for r in stored.values())
    assert np.allclose(stored[40][R.VECTOR], plain[40], atol=1e-5)
    hits = QueryCollection(store, governance).search(plain[40], k=1, tenant=TENANT)
    assert hits[0]["id"] == stored[40][R.ID]


def test_rekey_keeps_the_old_key_when_writers_keep_using_it(lite):
    store, governance = lite
    plain = _vectors(12, seed=2)
    store.upsert(_rows(governance, plain[:8]))
    in_flight = governance.cipher(TENANT, DIM)

    def after_pass(number: int, written: int) -> None:  # a writer adds an old-version row after every scan
        store.upsert(_rows(governance, plain[7 + number:8 + number], first=7 + number, cipher=in_flight))

    with pytest.raises(GovernanceError, match="kept appearing for 3 passes"):
        rekey(store, governance, TENANT, max_passes=3, after_pass=after_pass)
    assert governance.live_versions(TENANT) == [1, 2]  # nothing retired: nothing stranded
    stored = _stored(store, governance)
    assert sorted(stored) == list(range(11))
    assert all(np.allclose(stored[i][R.VECTOR], plain[i], atol=1e-5) for i in stored)
    result = rekey(store, governance, TENANT)  # once the writer is done, a re-run settles
    assert result["retired"] == [1, 2] and governance.live_versions(TENANT) == [3]


def test_a_search_during_a_rotation_finds_rows_under_either_key_version(lite):
    store, governance = lite
    plain = _vectors(400, seed=3)  # far more rows than the k x rerank_factor candidates
    store.upsert(_rows(governance, plain))
    new = governance.keys.rotate_tenant_key(TENANT)
    ids = {r[R.META]["n"]: r[R.ID] for r in store.query("", (R.ID, R.META))}
    half = f"{stale_filter(TENANT, new, True)} and {R.ID} in [{', '.join(literal(ids[i]) for i in range(0, 400, 2))}]"
    assert reencrypt(store, store, governance, TENANT, half) == 200  # a rekey stopped half way
    versions = {n: r[R.NONCE].split(":")[0] for n, r in _stored(store, governance).items()}
    assert [versions[i] for i in range(6)] == ["2", "1"] * 3
    search = QueryCollection(store, governance)
    for i in range(20):  # 10 rows under each version: each finds itself first
        assert search.search(plain[i], k=1, tenant=TENANT)[0]["id"] == ids[i], (i, versions[i])
    top = search.search(plain[0], k=10, tenant=TENANT)
    assert len({h["id"] for h in top}) == 10 and [h["score"] for h in top] == sorted((h["score"] for h in top), reverse=True)


def test_the_embed_jobs_protect_stage_writes_under_the_new_key_from_the_next_batch(lite):
    import pyarrow as pa

    from pixlake.platform.pipeline.protect import ProtectRows
    from pixlake.platform.pipeline.rows import OK, table

    _, governance = lite  # the stage calls the governance actor's methods; the object itself has them
    stage = ProtectRows(governance, DIM)

    def batch(first: int) -> pa.Table:
        rows = [{"source": f"/img/{i}.png", "id": f"{i:032x}", "tenant": TENANT, "content_hash": f"h{i}", "meta": "{}",
                 "subject": governance.pseudonym(TENANT, f"s{i}"), "status": OK, "reason": "", "vector": v.tolist()}
                for i, v in enumerate(_vectors(4, seed=first), first)]
        return table(rows, [("vector", pa.list_(pa.float32(), DIM))])

    assert {n.split(":")[0] for n in stage(batch(0)).column("nonce").to_pylist()} == {"1"}
    governance.keys.rotate_tenant_key(TENANT)  # pixlake rekey, while the job runs
    assert {n.split(":")[0] for n in stage(batch(4)).column("nonce").to_pylist()} == {"2"}


def _pixlake(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "pixlake"), *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_rekey_killed_between_a_servers_delete_and_insert_loses_no_row(milvus_server, tmp_path):
    keys = tmp_path / "keys"
    load_master_key(keys, create=True)  # an operator-provided key file (a server never creates one)
    collection = f"rekey_{tmp_path.name[-10:].replace('-', '_')}"
    store, governance = _open(tmp_path, milvus_server, collection, key_dir=str(keys))
    try:
        plain = _vectors(50, seed=4)
        store.upsert(_rows(governance, plain))
        env = subprocess_env(PIXLAKE_GOVERNANCE__KEY_DIR=str(keys))
        env.pop(FAULT_ENV, None)
        rekey_args = ["rekey", "--db", milvus_server, "--collection", collection, "--tenant", TENANT]
        crashed = _pixlake(rekey_args, {**env, FAULT_ENV: "upsert.deleted"})
        assert crashed.returncode == 137, crashed.stderr[-2000:]
        assert store.count() == 0  # the crash really came between the delete and the insert
        journal = Journal(governance, store).path
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600
        journaled = json.loads(journal.read_text())
        assert len(journaled) == 50 and all(r[R.NONCE].startswith("2:") for r in journaled)  # new-key ciphertext
        assert not any(np.allclose(r[R.VECTOR], plain[r[R.META]["n"]], atol=1e-3) for r in journaled)

        resumed = _pixlake(rekey_args, env)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert json.loads(resumed.stdout)["retired"] == [1, 2]
        assert not journal.exists()
        ids = [r[R.ID] for r in store.query("", (R.ID,))]
        assert len(ids) == len(set(ids)) == 50  # every row, exactly once
        stored = _stored(store, governance)
        assert sorted(stored) == list(range(50)) and all(r[R.NONCE].startswith("3:") for r in stored.values())
        assert all(np.allclose(stored[i][R.VECTOR], plain[i], atol=1e-5) for i in range(50))
        assert governance.live_versions(TENANT) == [3]
    finally:
        store.drop()
        store.close()
        governance.close()
