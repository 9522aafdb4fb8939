"""The embedded Milvus server (the PyPI package ``milvus``) for the benchmarks that need a
real server, or a running one named by ``--uri``."""

from __future__ import annotations

import functools
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional


@contextmanager
def milvus_server(base_dir: Path, config: dict):
    """The embedded Milvus server, always stopped: on return, exception, SIGINT, SIGTERM, SIGHUP
    (unless ignored, as under nohup), and — via PR_SET_PDEATHSIG — even when this process is
    SIGKILLed, so no orphaned ``milvus run`` keeps ports 19530/2379/9091."""
    import atexit
    import ctypes
    import signal
    import subprocess

    from milvus import MilvusServer

    libc = ctypes.CDLL(None, use_errno=True)

    def die_with_parent() -> None:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    saved = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            saved[sig] = signal.signal(sig, interrupt)
    server = MilvusServer()
    server.set_base_dir(str(base_dir))
    server.config.set("common.session.ttl", 5)
    for key, value in config.items():
        server.config.set(key, value)
    popen = subprocess.Popen
    subprocess.Popen = functools.partial(popen, preexec_fn=die_with_parent)
    atexit.register(server.stop)
    try:
        try:
            server.start()
        finally:
            subprocess.Popen = popen
        yield server
    finally:
        pid = server.server_proc.pid if server.server_proc else None
        server.stop()
        atexit.unregister(server.stop)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if pid is not None and Path(f"/proc/{pid}").exists() and "milvus" in Path(f"/proc/{pid}/cmdline").read_text():
            print(f"WARNING: milvus server {pid} still running after stop", file=sys.stderr)


@contextmanager
def milvus_uri(uri: Optional[str], base_dir: Path, config: dict):
    """Yields ``(uri, server pid or None)``: ``uri`` itself when given (a server already running,
    such as the test suite's; ``config`` is not applied to it and its pid is unknown), else the
    embedded server started under ``base_dir`` with ``config`` (:func:`milvus_server`)."""
    if uri:
        yield uri, None
        return
    with milvus_server(base_dir, config) as server:
        yield f"http://127.0.0.1:{server.listen_port}", server.server_proc.pid


def rss_mib(pid: Optional[int]) -> float:
    """Resident memory of ``pid`` in MiB (NaN when the pid is unknown)."""
    if pid is None:
        return float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
