"""`pixlake reindex` and `pixlake rollback` as users run them: exit codes, JSON out, and a
separate `pixlake serve` process that follows each switch. The commands run in this process
(on the session's Ray: a Ray start per command would cost most of the test); only the server
under test is a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pixlake.platform.corpus import MANIFEST, write_corpus
from tests.conftest import TINY, TINY_ENV, free_port, run_cli, subprocess_env, with_default_signals

BIN = Path(sys.executable).parent
# The current encoder is the configured one: here from the environment, as a deployment would.
ENV = {**TINY_ENV, "PIXLAKE_ENCODER__MODEL": TINY[0], "PIXLAKE_ENCODER__PRETRAINED": TINY[1]}


@pytest.fixture
def pixlake(ray_session, monkeypatch, capsys):
    """``pixlake(*args) -> (exit code, stdout, stderr)`` in this process, under ENV plus ``env``."""
    def run(*args: str, env: dict | None = None) -> tuple[int, str, str]:
        with monkeypatch.context() as m:
            for k, v in {**ENV, **(env or {})}.items():
                m.setenv(k, v)
            code = run_cli(*args)
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_reindex_refusals_and_exit_codes(pixlake, tmp_path):
    """Promotion needs the gate (exit 2), a refused gate is exit 1 with nothing switched, and a
    plain collection has nothing to roll back to (exit 2). The promotion and rollback paths:
    the server test below and tests/platform/test_lifecycle.py."""
    write_corpus(tmp_path / "c", 24, seed=4, holdout=0.5)
    manifest, db = str(tmp_path / "c" / MANIFEST), str(tmp_path / "r.db")
    assert pixlake("embed", manifest, "--db", db)[0] == 0
    code, _, err = pixlake("reindex", "--db", db, "--beta", "0.1")
    assert code == 2 and "--eval" in err.strip().splitlines()[-1]
    report = tmp_path / "reindex.json"
    code, _, err = pixlake("reindex", "--db", db, "--beta", "0.1", "--eval", manifest, "--max-recall-drop", "-1",
                           "--report", str(report))
    assert code == 1 and "quality gate refused" in err, err[-2000:]
    result = json.loads(report.read_text())
    assert (result["mode"], result["to"], result["rows"], result["promoted"]) == ("rebuild", "images_v2", 24, False)
    assert not result["gate"]["passed"]
    code, _, err = pixlake("rollback", "--db", db)
    assert code == 2 and "not a live alias" in err


def test_serve_answers_every_query_while_reindex_promotes_and_rollback_switches_back_on_a_server(
        pixlake, milvus_server, tmp_path):
    """The deployment shape: Milvus server, `pixlake serve` and `pixlake reindex`/`rollback`
    as separate processes; a client searching throughout sees only 200s and each switch."""
    import signal
    import threading
    import time

    import requests

    from pixlake.platform.governance.keys import load_master_key

    keys = tmp_path / "keys"
    load_master_key(keys, create=True)  # an operator-provided key file (a server never creates one)
    collection = f"live_{tmp_path.name[-8:].replace('-', '_')}"
    env = {"PIXLAKE_GOVERNANCE__KEY_DIR": str(keys), "PIXLAKE_STORE__DB": milvus_server,
           "PIXLAKE_STORE__COLLECTION": collection, "PIXLAKE_API_KEYS": "kl:default:search"}
    write_corpus(tmp_path / "c", 24, seed=6, holdout=0.5)
    manifest = str(tmp_path / "c" / MANIFEST)

    assert pixlake("embed", manifest, env=env)[0] == 0
    port = free_port()
    serve = subprocess.Popen([str(BIN / "pixlake"), "serve", "--model", TINY[0], "--pretrained", TINY[1], "--db", milvus_server,
                              "--collection", collection, "--port", str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env(**ENV, **env),
                             start_new_session=True, preexec_fn=with_default_signals)
    url, statuses, versions, stop = f"http://127.0.0.1:{port}", [], [], threading.Event()

    def search_throughout() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                r = session.post(f"{url}/v1/search", json={"text": "a red star", "k": 3},
                                 headers={"Authorization": "Bearer kl"}, timeout=60)
                statuses.append(r.status_code)
                time.sleep(0.2)  # ~10 queries/s: enough to catch a failed switch, little load on 2 CPUs

    def served_version() -> str:
        return requests.get(f"{url}/v1/collections", headers={"Authorization": "Bearer kl"}, timeout=30).json()["collections"][0]["version"]

    def wait_for(version: str) -> None:
        deadline = time.monotonic() + 30
        while (seen := served_version()) != version:
            assert time.monotonic() < deadline, f"Serve still serves {seen}, not {version}"
            time.sleep(0.2)
        versions.append(version)

    try:
        deadline = time.monotonic() + 180
        seen = []
        while "pixlake serving" not in (line := serve.stdout.readline()):
            seen.append(line)
            assert serve.poll() is None and time.monotonic() < deadline, "pixlake serve did not start:\n" + "".join(seen[-120:])
        clients = [threading.Thread(target=search_throughout) for _ in range(2)]
        for c in clients:
            c.start()
        try:
            wait_for(collection)
            code, out, err = pixlake("reindex", "--beta", "0.1", "--eval", manifest, "--max-recall-drop", "1", env=env)
            assert code == 0, err[-2000:]
            assert json.loads(out)["switch"] == {"collection": collection, "from": f"{collection}_v1",
                                                 "to": f"{collection}_v2"}
            wait_for(f"{collection}_v2")
            assert pixlake("rollback", env=env)[0] == 0
            wait_for(f"{collection}_v1")
            code, _, err = pixlake("rollback", env=env)
            assert code == 2 and "oldest version" in err
        finally:
            stop.set()
            for c in clients:
                c.join()
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=90)
        _drop_versions(milvus_server, collection)
    assert len(statuses) > 50 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert versions == [collection, f"{collection}_v2", f"{collection}_v1"]


def _drop_versions(uri: str, live: str) -> None:
    """Leave the session's server as found: later tests' erasures compact every collection on it."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    try:
        client.drop_alias(live)  # a no-op on a 2.3 server when there is none
        for name in client.list_collections():
            if name == live or name.startswith(f"{live}_v"):
                client.drop_collection(name)
    finally:
        client.close()
