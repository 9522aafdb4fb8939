"""``pixlake dedup`` on a real milvus-lite collection of encrypted rows with planted copies."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pixlake.platform import records as R
from pixlake.platform.collection import open_collection
from pixlake.platform.governance.keys import load_master_key
from pixlake.platform.settings import load_settings
from tests.conftest import run_cli

DIM, FINGERPRINT = 32, "planted:0000000000000000"


def _settings(db: Path):
    return load_settings(overrides={"store": {"db": str(db), "collection": "dups"},
                                    "governance": {"key_dir": str(db.parent / "keys")}})


def _write(settings, tenant: str, vectors: np.ndarray, subjects: list[str], first: int = 0) -> list[str]:
    """Store encrypted rows as the embed job does; their ids, in order."""
    with open_collection(settings) as collection:
        store, gov = collection.store, collection.governance
        store.ensure_collection(DIM, FINGERPRINT)
        crypto = gov.tenant_crypto(tenant)
        pseudonyms = [crypto.pseudonym(s) for s in subjects]
        keys = gov.data_keys(tenant, sorted(set(pseudonyms)))
        records = []
        for k, (v, subject) in enumerate(zip(vectors, pseudonyms)):
            chash = f"{first + k:064x}"
            records.append({R.ID: R.row_id(tenant, subject, chash), R.TENANT: tenant, R.SUBJECT: subject,
                            R.CONTENT_HASH: chash, R.SOURCE: f"file:///{tenant}/{first + k}.jpg", R.MODEL: FINGERPRINT,
                            R.META: {}, R.VECTOR: v.tolist()})
        store.upsert(crypto.protect(records, keys))
        store.flush()
    return [r[R.ID] for r in records]


def _planted(seed: int):
    """4 originals with 2 copies each (cosine ~0.99), then 10 unrelated rows; the true groups by position."""
    rng = np.random.default_rng(seed)
    rows, groups = [], []
    for _ in range(4):
        base = rng.normal(size=DIM)
        groups.append({len(rows), len(rows) + 1, len(rows) + 2})
        rows += [base, base + rng.normal(scale=0.02, size=DIM), base + rng.normal(scale=0.02, size=DIM)]
    rows += list(rng.normal(size=(10, DIM)))
    x = np.array(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), groups


@pytest.fixture
def collection(tmp_path):
    """Tenant ``acme``: 4 planted groups of 3 and 10 distinct rows (subject ``s<k % 5>``);
    tenant ``other``: exact copies of acme's rows, which must never join acme's groups."""
    db = tmp_path / "d.db"
    load_master_key(tmp_path / "keys", create=True)
    settings = _settings(db)
    x, groups = _planted(0)
    ids = _write(settings, "acme", x, [f"s{k % 5}" for k in range(len(x))])
    _write(settings, "other", x, ["t"] * len(x), first=1000)
    return db, settings, ids, [{ids[k] for k in g} for g in groups]


def _dedup(capsys, db: Path, *flags: str) -> tuple[int, str, str]:
    code = run_cli("dedup", "--db", str(db), "--collection", "dups", "--config", str(db.parent / "cfg.yaml"), *flags)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(autouse=True)
def _config(tmp_path):
    (tmp_path / "cfg.yaml").write_text(f"governance:\n  key_dir: {tmp_path / 'keys'}\n")


def test_planted_groups_are_found_exactly_within_the_tenant(collection, capsys, tmp_path):
    db, _, ids, groups = collection
    out_file = tmp_path / "groups.parquet"
    code, out, err = _dedup(capsys, db, "--tenant", "acme", "--out", str(out_file), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["rows"], summary["groups"], summary["rows_in_groups"], summary["threshold"]) == (22, 4, 12, 0.95)
    found = [{m["id"] for m in g["members"]} | {g["representative"]["id"]} for g in summary["groups_preview"]]
    assert sorted(map(sorted, found)) == sorted(map(sorted, groups))  # acme's ids only: no row of "other"
    assert all(g["representative"]["source"].startswith("file:///acme/") for g in summary["groups_preview"])
    assert stat.S_IMODE(os.stat(out_file).st_mode) == 0o600  # it holds opened sources
    table = pq.read_table(out_file).to_pylist()
    assert len(table) == 12 and sum(r["representative"] for r in table) == 4
    assert {r["id"] for r in table} == set().union(*groups)
    assert all(r["score"] >= 0.95 for r in table)


def test_a_subject_being_erased_is_never_shown(collection, capsys):
    db, settings, ids, groups = collection
    with open_collection(settings) as c:  # on the deny-list, rows not yet deleted: an erasure under way
        c.governance.ledger.deny("acme", c.governance.tenant_crypto("acme").pseudonym("s0"), "erasure-1")
    code, out, err = _dedup(capsys, db, "--tenant", "acme", "--json")
    assert code == 0, err
    summary = json.loads(out)
    shown = {m["id"] for g in summary["groups_preview"] for m in g["members"]} | {
        g["representative"]["id"] for g in summary["groups_preview"]}
    erased = {ids[k] for k in range(len(ids)) if k % 5 == 0}
    assert summary["rows"] == 22 - len(erased) and not shown & erased


@pytest.mark.parametrize("threshold", ["0", "1.5", "-0.2", "nan"])
def test_a_threshold_outside_zero_one_is_a_clear_error(collection, capsys, threshold):
    db = collection[0]
    code, out, err = _dedup(capsys, db, "--threshold", threshold)
    assert code == 2 and out == "" and "(0, 1]" in err


def test_a_missing_collection_is_a_clear_error(tmp_path, capsys):
    load_master_key(tmp_path / "keys", create=True)
    code, out, err = _dedup(capsys, tmp_path / "none.db")
    assert code == 2 and "no collection dups" in err


def test_a_page_of_erased_rows_only_and_an_empty_tenant(collection, capsys):
    """The rows come in pages; a page whose every subject is being erased comes back empty."""
    db, settings, ids, _ = collection
    with open_collection(settings) as c:
        for k in range(5):
            c.governance.ledger.deny("acme", c.governance.tenant_crypto("acme").pseudonym(f"s{k}"), f"erasure-{k}")
    code, out, err = _dedup(capsys, db, "--tenant", "acme", "--json")
    assert code == 0, err
    assert json.loads(out)["rows"] == 0 and json.loads(out)["groups"] == 0
    code, out, err = _dedup(capsys, db, "--tenant", "nobody", "--json")
    assert code == 0 and json.loads(out)["rows"] == 0, err
