"""`pixlake serve` as users run it: a separate process that prints its URL, answers, and
stops cleanly on SIGINT (Ctrl-C) and on SIGTERM (Kubernetes, systemd), leaving no Ray or Serve
process behind, even when it was started with SIGINT ignored (as a non-interactive shell
starts a background job)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.conftest import TINY, TINY_ENV, free_port, read_until, subprocess_env, tiny_settings

BIN = Path(sys.executable).parent


def _alive(pids: list) -> list:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _pgroup(pgid: int) -> list:
    """Live processes of a process group."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                found.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return _alive(found)


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())[:200]
    except psutil.Error:
        return str(pid)


def _sigint_ignored() -> None:
    """Child setup: its own session, SIGINT ignored as `cmd &` in a script leaves it, and
    SIGTERM at its default whatever this process inherited."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="module")
def embedded(ray_session, tmp_path_factory):
    """Flags and environment of a milvus-lite collection (embedded on the session's Ray)."""
    from pixlake.platform.corpus import write_corpus
    from pixlake.platform.pipeline.job import run_embed_job

    root = tmp_path_factory.mktemp("serve-cli")
    write_corpus(root / "corpus", 48, seed=1)
    run_embed_job(str(root / "corpus" / "images"), tiny_settings(root / "p.db"))
    flags = ["--db", str(root / "p.db"), "--model", TINY[0], "--pretrained", TINY[1]]
    return flags, subprocess_env(**TINY_ENV, PIXLAKE_API_KEYS="k1:default:search")


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_answers_then_stops_on_signal_with_sigint_ignored(embedded, stop_signal):
    flags, env = embedded
    port = free_port()
    serve = subprocess.Popen([str(BIN / "pixlake"), "serve", *flags, "--port", str(port)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=_sigint_ignored)
    try:
        line = read_until(serve, "pixlake serving", timeout=180)
        url = f"http://127.0.0.1:{port}"
        assert url in line
        assert requests.get(f"{url}/readyz", timeout=30).status_code == 200
        children = psutil.Process(serve.pid).children(recursive=True)
        names = " ".join(_cmdline(c.pid) for c in children)
        assert "raylet" in names and "gcs_server" in names and "ServeReplica" in names, names
        family = {serve.pid, *(c.pid for c in children), *_pgroup(serve.pid)}

        hits = requests.post(f"{url}/v1/search", json={"text": "a red circle", "k": 3},
                             headers={"Authorization": "Bearer k1"}, timeout=30)
        assert hits.status_code == 200, hits.text
        assert len(hits.json()["results"]) == 3

        serve.send_signal(stop_signal)
        # Before: SIGINT was ignored for good (no exit in 90 s); SIGTERM hit the handler Ray's
        # core worker installs, which aborts the process (exit -6) without stopping Serve.
        assert serve.wait(timeout=90) == 0
        rest = serve.stdout.read()
        assert f"shutting down ({stop_signal.name})" in rest and "Traceback" not in rest, rest[-3000:]
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "the HTTP port is still open"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (_alive(list(family)) or _pgroup(serve.pid)):
            time.sleep(0.5)
        left = {*_alive(list(family)), *_pgroup(serve.pid)}
        assert not left, f"Ray or Serve processes were left behind: {[_cmdline(p) for p in left]}"
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)


@pytest.mark.parametrize("where", ["config", "env"])
def test_serve_refuses_the_published_placeholder_key_before_starting(where, tmp_path, monkeypatch, capsys):
    # serve.yaml and deploy/rayservice.yaml ship sha256("change-me") as a placeholder; before,
    # `pixlake serve` started with it and answered `Bearer change-me`.
    from pixlake.cli import main
    from pixlake.serve.auth import hash_key

    flags = ["serve", "--db", str(tmp_path / "none.db")]
    if where == "config":
        config = tmp_path / "serve.yaml"
        config.write_text(f"keys: [{{key_hash: {hash_key('change-me')}, tenant: acme, scopes: [search]}}]\n")
        flags += ["--config", str(config)]
    else:
        monkeypatch.setenv("PIXLAKE_API_KEYS", "k1:default:search,change-me:acme:search")
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert "published placeholder 'change-me'" in err and "sha256sum" in err, err
