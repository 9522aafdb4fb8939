"""`pixlake serve` as users run it: a separate process that prints its URL, answers, and
stops cleanly on Ctrl-C (SIGINT), leaving no Ray processes behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from tests.conftest import TINY, TINY_ENV

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if marker in line:
            return line
    raise AssertionError(f"no {marker!r} within {timeout}s; output:\n{''.join(seen)}")


def _alive(pids: list) -> list:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_serve_prints_url_answers_and_stops_on_ctrl_c(corpus_dir, tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **TINY_ENV}
    db = str(tmp_path / "p.db")
    flags = ["--db", db, "--model", TINY[0], "--pretrained", TINY[1]]
    embed = subprocess.run([str(BIN / "pixlake"), "embed", str(corpus_dir), *flags], capture_output=True, text=True,
                           timeout=300, env=env)
    assert embed.returncode == 0, embed.stderr[-2000:]

    port = _free_port()
    env["PIXLAKE_API_KEYS"] = "k1:default:search"
    serve = subprocess.Popen([str(BIN / "pixlake"), "serve", *flags, "--port", str(port)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        line = _read_until(serve, "pixlake serving", timeout=180)
        url = f"http://127.0.0.1:{port}"
        assert url in line
        family = [serve.pid] + [c.pid for c in psutil.Process(serve.pid).children(recursive=True)]
        assert len(family) > 1  # Ray's raylet, GCS and workers run under it

        hits = requests.post(f"{url}/v1/search", json={"text": "a red circle", "k": 3},
                             headers={"Authorization": "Bearer k1"}, timeout=30)
        assert hits.status_code == 200, hits.text
        assert len(hits.json()["results"]) == 3

        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=90) == 0
        rest = serve.stdout.read()
        assert "shutting down" in rest and "Traceback" not in rest, rest[-3000:]
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "the HTTP port is still open"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(family[1:]):
            time.sleep(0.5)
        assert not _alive(family[1:]), "Ray processes were left behind"
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
