"""The job as users start it: `pixlake embed`/`search`/`encode`, then as a separate process
(`python -m pixlake.jobs.embed`) killed midway and re-run, and submitted to a running Ray
cluster. Flag errors: tests/jobs/test_embed_flags.py."""

from __future__ import annotations

import json
import shutil
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pixlake.platform.store import MilvusStore
from tests.conftest import TINY, TINY_ENV, free_port, run_cli, subprocess_env

BIN = Path(sys.executable).parent
TINY_FLAGS = ["--model", TINY[0], "--pretrained", TINY[1]]


def _env() -> dict:
    return subprocess_env(**TINY_ENV)


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=_env())


def test_cli_embed_then_search_and_encode(ray_session, corpus_dir, tmp_path, monkeypatch, capsys):
    # In this process, on the session's Ray (exit codes and stdout through run_cli, as the
    # console script returns them); the subprocess runs are the kill and submit tests below.
    for k, v in TINY_ENV.items():
        monkeypatch.setenv(k, v)

    def pixlake(*args: str) -> tuple[int, str, str]:
        code = run_cli(*args)
        out, err = capsys.readouterr()
        return code, out, err

    db = str(tmp_path / "p.db")
    report = tmp_path / "r.json"
    code, out, err = pixlake("embed", str(corpus_dir), "--db", db, *TINY_FLAGS, "--report", str(report))
    assert code == 0, err
    assert "embedded    48" in out
    assert json.loads(report.read_text())["embedded"] == 48

    query = sorted(corpus_dir.glob("*.png"))[7]
    code, out, err = pixlake("search", "--db", db, *TINY_FLAGS, "--image", str(query), "-k", "3", "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert [set(h) for h in hits] == [{"id", "source", "score", "meta"}] * 3
    assert hits[0]["source"] == str(query)

    code, out, _ = pixlake("search", "--db", db, *TINY_FLAGS, "--text", "a red circle", "--json", "-k", "2")
    assert code == 0 and len(json.loads(out)) == 2

    code, _, err = pixlake("search", "--db", db, "--model", "pixlake-tiny", "--pretrained", str(tmp_path / "nope.pt"), "--text", "x")
    assert code == 2 and "checkpoint not found" in err

    code, out, _ = pixlake("encode", *TINY_FLAGS, "--text", "a red circle")
    vector = json.loads(out)
    assert len(vector) == 32 and abs(sum(x * x for x in vector) - 1) < 1e-4


def _wal_bytes(db: Path) -> int:
    # Progress probe for the test only: milvus-lite appends upserts to these files, and
    # the database cannot be opened while the job holds its lock.
    return sum(p.stat().st_size for p in db.glob("collections/*/wal/*") if p.is_file())


def test_killed_driver_resumes_without_loss_or_duplicates(ray_session, tmp_path, monkeypatch, capsys):
    from pixlake.platform.corpus import write_corpus

    corpus = tmp_path / "big"
    n = len({p.read_bytes() for p in write_corpus(corpus, 1500, seed=11)})  # distinct images
    db = tmp_path / "p.db"
    args = [sys.executable, "-m", "pixlake.jobs.embed", str(corpus / "images"), "--db", str(db), *TINY_FLAGS, "--batch-size", "8"]
    job = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        baseline = None
        while time.monotonic() < deadline and job.poll() is None:
            size = _wal_bytes(db)
            baseline = size if baseline is None and size else baseline
            if baseline is not None and size > baseline + 20_000:  # some batches are in
                break
            time.sleep(0.05)
        assert job.poll() is None, "the job finished before it could be killed; make the corpus larger"
        job.send_signal(signal.SIGKILL)
        job.wait()
    finally:
        if job.poll() is None:
            job.kill()

    store = MilvusStore(str(db), "images")  # waits for the dead job's store process to let go
    try:
        partial = store.count()
    finally:
        store.close()
    assert 0 < partial < n

    for k, v in TINY_ENV.items():  # the re-run: in this process, on the session's Ray
        monkeypatch.setenv(k, v)
    code = run_cli("embed", *args[3:], "--json")
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    report = json.loads(out)
    assert report["collection_count"] == n  # nothing lost, nothing duplicated
    assert report["embedded"] == n - partial  # only what the killed run had not written
    assert report["skipped"] == 1500 - report["embedded"]


def test_a_job_killed_right_after_it_reports_success_loses_nothing(tmp_path):
    from pixlake.platform.corpus import MANIFEST, write_corpus

    write_corpus(tmp_path / "c", 300, seed=7, holdout=1.0)
    db = tmp_path / "p.db"
    args = [sys.executable, "-m", "pixlake.jobs.embed", str(tmp_path / "c" / MANIFEST), "--db", str(db), *TINY_FLAGS, "--json"]
    job = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env(), start_new_session=True,
                           text=True)
    try:
        out = ""
        for line in job.stdout:  # the JSON report, printed once the job has succeeded
            out += line
            if line.startswith("}"):
                break
        os.killpg(job.pid, signal.SIGKILL)  # the job and its Ray, before they exit on their own
        job.wait()
    finally:
        if job.poll() is None:
            job.kill()
    report = json.loads(out[out.index("{"):])
    assert report["embedded"] == report["collection_count"] == 300
    store = MilvusStore(str(db), "images")
    try:
        ids = [r["id"] for r in store.query("", ["id"])]
    finally:
        store.close()
    assert len(ids) == len(set(ids)) == 300


def test_runs_unchanged_under_ray_job_submit(corpus_dir, tmp_path):
    port, dash, agent = free_port(), free_port(), free_port()
    env = _env()
    # Ray 2.60 clusters use token auth (token in ~/.ray/auth_token); the job CLI sends it
    # only when told to.
    env["RAY_AUTH_MODE"] = "token"
    # Its own temp dir, so its address file is not /tmp/ray/ray_current_cluster: a plain
    # ray.init() elsewhere on the machine (a pixlake command started meanwhile) would join
    # this cluster and die with it. Short: Ray's socket paths are capped.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    start = subprocess.run(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         # Not the default 52365: an agent of a Ray that is still exiting may hold it.
         f"--dashboard-agent-listen-port={agent}", f"--temp-dir={temp_dir}",
         "--num-cpus=2", "--include-dashboard=true", "--disable-usage-stats"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert start.returncode == 0, start.stderr
    assert not _joined_by_default(port), "a plain ray.init() on this machine would join the test's cluster"
    try:
        db = tmp_path / "p.db"
        for _ in range(12):
            submit = subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--",
                 sys.executable, "-m", "pixlake.jobs.embed", str(corpus_dir), "--db", str(db), *TINY_FLAGS, "--json"],
                capture_output=True, text=True, timeout=300, env=env,
            )
            # Right after `ray start` the dashboard may answer before its job agent is up;
            # the job was then not submitted, so asking again is safe.
            if "No available agent to submit job" not in submit.stderr:
                break
            time.sleep(5)
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        assert "succeeded" in submit.stdout.lower()
        store = MilvusStore(str(db), "images")
        try:
            assert store.count() == 48
        finally:
            store.close()
    finally:
        _stop_cluster(port)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _joined_by_default(gcs_port: int) -> bool:
    """Whether the address file a plain ``ray.init()`` reads names the cluster on ``gcs_port``."""
    current = Path("/tmp/ray/ray_current_cluster")
    return current.exists() and current.read_text().strip().endswith(f":{gcs_port}")


def _stop_cluster(gcs_port: int) -> None:
    """Stop only the cluster this test started (``ray stop`` would end every Ray on the machine)."""
    import psutil

    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if f":{gcs_port} " in cmdline + " " or f"--gcs_server_port={gcs_port}" in cmdline:
            mine.append(proc)
    mine += [child for proc in mine for child in proc.children(recursive=True)]  # agents, workers
    for proc in mine:
        proc.terminate()
    _, alive = psutil.wait_procs(mine, timeout=20)
    for proc in alive:
        proc.kill()

