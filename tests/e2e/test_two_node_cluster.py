"""The embed job on a two-node Ray cluster on this machine, submitted with `ray job submit`
against a Milvus server: `job.task_resources` pins the CPU stages to the head and
`job.encoder_resources` the encoder to the second node, and Ray's own task records show the
work ran on both, with exact counts and no duplicates."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from pixlake.platform.governance.keys import load_master_key
from pixlake.platform.store import MilvusStore
from tests.conftest import TINY, TINY_BETA, free_port, subprocess_env
from tests.e2e.test_embed_cli import BIN, _stop_cluster


def _ray(*args: str, env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], capture_output=True, text=True, timeout=timeout, env=env)


def _start_cluster(env: dict, head: dict, worker: dict) -> tuple[int, int, str]:
    """A head and one worker node (1 CPU each, with these custom resources); (gcs port, dashboard port, temp dir)."""
    port, dash = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # not /tmp/ray: a plain ray.init() must not join it
    started = _ray("start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                   f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp_dir}", "--num-cpus=1",
                   f"--resources={json.dumps(head)}", "--include-dashboard=true", "--disable-usage-stats", env=env)
    assert started.returncode == 0, started.stderr
    joined = _ray("start", f"--address=127.0.0.1:{port}", "--num-cpus=1", f"--resources={json.dumps(worker)}",
                  f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
                  "--disable-usage-stats", env=env)
    assert joined.returncode == 0, joined.stderr
    return port, dash, temp_dir


def _submit(dash: int, env: dict, job_env: dict, *args: str) -> subprocess.CompletedProcess:
    runtime_env = json.dumps({"env_vars": job_env})
    for _ in range(12):
        submit = _ray("job", "submit", "--address", f"http://127.0.0.1:{dash}", "--runtime-env-json", runtime_env, "--",
                      sys.executable, "-m", "pixlake.jobs.embed", *args, env=env, timeout=600)
        # Right after `ray start` the dashboard may answer before its job agent is up.
        if "No available agent to submit job" not in submit.stderr:
            return submit
        time.sleep(5)
    return submit


def _listed(what: str, dash: int, env: dict) -> list[dict]:
    out = _ray("list", what, "--address", f"http://127.0.0.1:{dash}", "--detail", "--format", "json",
               "--limit", "10000", env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_embed_job_spreads_over_two_nodes_with_exact_counts(milvus_server, corpus_dir, tmp_path):
    env = subprocess_env()
    env["RAY_AUTH_MODE"] = "token"  # Ray 2.60 clusters use token auth; the CLI sends it when told to
    keys = tmp_path / "keys"
    load_master_key(keys, create=True)  # an operator-provided key (a server never creates one)
    port, dash, temp_dir = _start_cluster(env, head={"pixlake_cpu": 100}, worker={"pixlake_encoder": 1})
    try:
        job_env = {"PIXLAKE_GOVERNANCE__KEY_DIR": str(keys), "PIXLAKE_GOVERNANCE__BETA": str(TINY_BETA),
                   "PIXLAKE_JOB__TASK_RESOURCES": json.dumps({"pixlake_cpu": 1}),
                   "PIXLAKE_JOB__ENCODER_RESOURCES": json.dumps({"pixlake_encoder": 1})}
        submit = _submit(dash, env, job_env, str(corpus_dir), "--db", milvus_server, "--collection", "two_nodes",
                         "--model", TINY[0], "--pretrained", TINY[1], "--batch-size", "8", "--json")
        assert submit.returncode == 0 and "succeeded" in submit.stdout.lower(), submit.stdout[-3000:] + submit.stderr[-3000:]
        nodes = {n["node_id"]: n for n in _listed("nodes", dash, env)}
        head = next(i for i, n in nodes.items() if "pixlake_cpu" in n["resources_total"])
        worker = next(i for i, n in nodes.items() if "pixlake_encoder" in n["resources_total"])
        ran: dict[str, set[str]] = {}
        for task in _listed("tasks", dash, env):
            if task["state"] == "FINISHED" and task["node_id"]:  # actor creation records carry no node
                ran.setdefault(task["name"], set()).add(task["node_id"])
        decode = set().union(*(where for name, where in ran.items() if "DecodeImages" in name))
        embed = set().union(*(where for name, where in ran.items() if "EmbedImages" in name))
        assert decode == {head}, ran
        assert embed == {worker}, ran
    finally:
        _stop_cluster(port)
        shutil.rmtree(temp_dir, ignore_errors=True)
    with MilvusStore(milvus_server, "two_nodes") as store:
        ids = [r["id"] for r in store.query("", ["id"])]
    assert len(ids) == len(set(ids)) == 48


def _kill_node(marker: str) -> int:
    """SIGKILL the raylet whose resources name ``marker`` and every process under it (the
    node's workers and agents): a machine lost, not a shutdown. Returns how many died."""
    import psutil

    raylets = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])
               and "raylet" in " ".join(p.info["cmdline"] or [])]
    assert len(raylets) == 1, raylets
    doomed = raylets + raylets[0].children(recursive=True)
    for p in doomed:
        p.kill()
    psutil.wait_procs(doomed, timeout=20)
    return len(doomed)


def _rows(uri: str, collection: str) -> int:
    from pymilvus import MilvusClient

    from pymilvus.exceptions import MilvusException

    client = MilvusClient(uri)
    try:
        if not client.has_collection(collection):
            return 0
        return int(client.query(collection, filter="", output_fields=["count(*)"], consistency_level="Strong")[0]["count(*)"])
    except MilvusException:  # created but not loaded yet
        return 0
    finally:
        client.close()


def test_a_worker_node_killed_mid_job_costs_no_row(milvus_server, tmp_path):
    """Both nodes run the CPU stages; the second is SIGKILLed once rows are being written. Ray
    runs its lost tasks again on the head (same task ids, so they keep their claims) and the
    job completes with every distinct image stored exactly once."""
    from pixlake.platform.corpus import write_corpus

    distinct = len({p.read_bytes() for p in write_corpus(tmp_path / "c", 600, seed=13)})
    env = subprocess_env()
    env["RAY_AUTH_MODE"] = "token"
    keys = tmp_path / "keys"
    load_master_key(keys, create=True)
    port, dash, temp_dir = _start_cluster(env, head={"pixlake_cpu": 100, "pixlake_encoder": 1},
                                          worker={"pixlake_cpu": 100, "pixlake_doomed_node": 1})
    try:
        job_env = {"PIXLAKE_GOVERNANCE__KEY_DIR": str(keys), "PIXLAKE_GOVERNANCE__BETA": str(TINY_BETA),
                   "PIXLAKE_JOB__TASK_RESOURCES": json.dumps({"pixlake_cpu": 1}),
                   "PIXLAKE_JOB__ENCODER_RESOURCES": json.dumps({"pixlake_encoder": 1}),
                   "PIXLAKE_JOB__WRITE_BATCH_ROWS": "16"}
        killed = {}

        def kill_when_writing() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not killed:
                if _rows(milvus_server, "node_lost") > 0:
                    killed["processes"] = _kill_node("pixlake_doomed_node")
                    killed["rows_then"] = _rows(milvus_server, "node_lost")
                    return
                time.sleep(0.2)

        import threading

        killer = threading.Thread(target=kill_when_writing, daemon=True)
        killer.start()
        submit = _submit(dash, env, job_env, str(tmp_path / "c" / "images"), "--db", milvus_server,
                         "--collection", "node_lost", "--model", TINY[0], "--pretrained", TINY[1],
                         "--batch-size", "8", "--json")
        killer.join(timeout=5)
        assert submit.returncode == 0 and "succeeded" in submit.stdout.lower(), submit.stdout[-3000:] + submit.stderr[-3000:]
        assert killed, "the worker node was never killed: the job finished first"
        assert killed["rows_then"] < distinct, killed
        doomed = next(n["node_id"] for n in _listed("nodes", dash, env) if "pixlake_doomed_node" in n["resources_total"])
        lost = [t["name"] for t in _listed("tasks", dash, env) if t["node_id"] == doomed and t["state"] != "FINISHED"]
        assert lost, "no task of the job was running on the node when it died"
    finally:
        _stop_cluster(port)
        shutil.rmtree(temp_dir, ignore_errors=True)
    with MilvusStore(milvus_server, "node_lost") as store:
        ids = [r["id"] for r in store.query("", ["id"])]
    assert len(ids) == len(set(ids)) == distinct
