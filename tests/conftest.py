"""Shared fixtures: a tiny open_clip model with seeded random weights, synthetic corpora,
milvus-lite under tmp_path, one local Ray instance and one Milvus server per test session.

Tiers: a test that starts Ray, a Serve app, a Milvus server or a subprocess is ``slow``
(marked here from the fixtures it uses, or by its module's ``pytestmark``); ``make test-fast``
runs the rest with PIXLAKE_TEST_TIER=fast, where starting any of those fails the test, so an
unmarked heavy test cannot slip into the fast tier.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

# Every Serve proxy this session's Ray starts caps request bodies where it reads them, as
# `pixlake serve` sets up (pixlake.serve.guard.ProxyBodyCap; see ray_session for its cap).
os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "pixlake.serve.guard:proxy_middlewares")

# faiss's OpenMP threads spin waiting for each other when Ray's processes hold the 2 cores
# (an m=64 index build took 110 s instead of 11 s); the tests measure no speed, so one thread.
try:
    import faiss
except ImportError:  # pragma: no cover - pinned in the project's dependencies
    pass
else:
    faiss.omp_set_num_threads(1)

SERVED_MAX_BODY_BYTES = 2_000_000  # tests/serve/conftest.py's app
TINY = ("pixlake-tiny", "none")  # (model, pretrained): registered bundled config, seeded random weights
# The tiny model's random embeddings crowd together (mean pairwise cosine 0.88, nearest
# neighbour at distance 0.06), so the default encryption noise (radius beta/4 = 0.25) would
# swamp their differences; tests over it use a beta scaled to that spread. The demo model's
# embeddings (nearest neighbour at 0.62) are tested at the default beta.
TINY_BETA = 0.05
TINY_ENV = {"PIXLAKE_GOVERNANCE__BETA": str(TINY_BETA)}


# Using any of these fixtures (directly or through another fixture) makes a test slow.
SLOW_FIXTURES = frozenset({"ray_session", "served", "milvus_server", "milvus_server_process"})
FAST_TIER = os.environ.get("PIXLAKE_TEST_TIER") == "fast"


def pytest_collection_modifyitems(config, items):
    """Mark the tests that need a Ray cluster, a Serve app or a Milvus server ``slow``."""
    for item in items:
        if SLOW_FIXTURES.intersection(item.fixturenames) or "tests/e2e/" in item.nodeid:
            item.add_marker(pytest.mark.slow)


class SlowTierOnly(RuntimeError):
    """A fast-tier test started something only the slow tier may start."""


@pytest.fixture(autouse=True)
def _fast_tier_guard(request, monkeypatch):
    """In the fast tier, starting Ray, a Milvus server or a subprocess fails the test."""
    if not FAST_TIER or request.node.get_closest_marker("slow"):
        yield
        return

    def refuse(what):
        def _refused(*args, **kwargs):
            raise SlowTierOnly(f"{request.node.nodeid} starts {what}: mark it slow (pytest.mark.slow)")
        return _refused

    import open_clip  # noqa: F401 - imported before the guard: torch probes its CUDA libraries in a subprocess at import
    import ray
    import ray._private.worker as ray_worker

    monkeypatch.setattr(ray, "init", refuse("Ray"))
    monkeypatch.setattr(ray_worker, "init", refuse("Ray"))
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("a subprocess"))
    try:
        from milvus import MilvusServer
    except ImportError:  # pragma: no cover - the package is pinned in the test extras
        pass
    else:
        monkeypatch.setattr(MilvusServer, "start", refuse("a Milvus server"))
    yield


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment for a CLI subprocess: without RAY_ADDRESS (so it starts its
    own Ray rather than joining a cluster the caller's shell names), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(extra)
    return env


def with_default_signals() -> None:
    """``preexec_fn`` for a subprocess a test will signal: SIGINT and SIGTERM at their
    defaults, whatever this process inherited (a background shell ignores SIGINT, and an
    ignored signal stays ignored across exec)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_cli(*argv: str) -> int:
    """``pixlake *argv`` in this process (its output goes to capsys); the exit code, as the
    console script would exit with it (argparse's usage errors included)."""
    from pixlake.cli import main

    try:
        return main(list(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


def read_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    """Read ``proc``'s text stdout until a line holds ``marker`` (returned); fail with what it
    printed if it exits or ``timeout`` seconds pass first."""
    import time

    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if marker in line:
            return line
    raise AssertionError(f"no {marker!r} within {timeout}s; output:\n{''.join(seen)}")


def free_port() -> int:
    """A loopback TCP port free right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_master_key_env(monkeypatch):
    """No master key from the environment: governance finds (or creates) its key file."""
    from pixlake.platform.governance.keys import MASTER_KEY_ENV, MASTER_KEY_FILE_ENV

    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)
    monkeypatch.delenv(MASTER_KEY_FILE_ENV, raising=False)


@pytest.fixture(scope="session")
def tiny_encoder():
    """The tiny encoder, loaded once on CPU."""
    from pixlake.platform.encoder import load_encoder

    return load_encoder(*TINY, device="cpu")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the tests that run pipelines in-process (starting Ray costs seconds)."""
    import ray

    from pixlake.platform.ray_runtime import start_ray

    os.environ.pop("RAY_ADDRESS", None)
    # CI's first start on a freshly installed machine once outlasted Ray's 30 s wait for the GCS
    # port file; start_ray tries again, and the wait is longer too
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "90")
    # the proxies of this Ray cap bodies at the served app's cap (read when Ray starts them);
    # subprocesses started later (`pixlake serve`) do not inherit it
    os.environ["PIXLAKE_MAX_BODY_BYTES"] = str(SERVED_MAX_BODY_BYTES)
    try:
        start_ray("local", num_cpus=2)
    finally:
        os.environ.pop("PIXLAKE_MAX_BODY_BYTES")
    yield ray
    ray.shutdown()


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """48 distinct synthetic PNG images (seeded)."""
    from pixlake.platform.corpus import write_corpus

    out = tmp_path / "corpus"
    write_corpus(out, 48, seed=1)
    return out / "images"


def tiny_settings(db: Path, **job):
    """Settings for the tiny model writing into ``db``."""
    from pixlake.platform.settings import load_settings

    return load_settings(
        overrides={
            "store": {"db": str(db), "collection": "images"},
            "encoder": {"model": TINY[0], "pretrained": TINY[1]},
            "job": {"batch_size": 16, **job},
            "governance": {"beta": TINY_BETA},
        }
    )


def start_milvus_server(base_dir: Path):
    """Start a real Milvus server (the embedded one of the PyPI package ``milvus``, 2.3.5)
    with its data under ``base_dir``; returns the ``MilvusServer`` (``.listen_port``).

    It serves on 127.0.0.1's port but Milvus 2.3 binds its internal ports on every interface
    (no setting changes that); the test machines allow no inbound traffic. ``server.start()``
    again after a kill comes back on the same ports (the reliability tests restart it).
    """
    import atexit
    import socket

    from milvus import MilvusServer, MilvusServerConfig

    class SamePortsConfig(MilvusServerConfig):
        # The package probes ports without SO_REUSEADDR, so right after a kill (sockets in
        # TIME_WAIT) it would move the server to the next free port; Milvus itself binds
        # with SO_REUSEADDR, so probing the same way keeps a restarted server where it was.
        def try_bind_port(self, port):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
                return sock
            except OSError:
                sock.close()
                return None

    server = MilvusServer(SamePortsConfig())
    server.set_base_dir(str(base_dir))
    # Milvus ignores SIGTERM, so stop() ends in SIGKILL; a short session lease lets a
    # restart come back in seconds instead of 30 s.
    server.config.set("common.session.ttl", 5)
    server.start()
    atexit.register(server.stop)  # never leave a server behind an interrupted run
    return server


def kill_milvus_server(server) -> None:
    """SIGKILL a server from :func:`start_milvus_server` (a crash, not a shutdown); ``server.start()`` restarts it."""
    server.server_proc.kill()
    server.server_proc.wait()
    server.stop()  # forgets the process, closes its log files


@pytest.fixture(scope="session")
def milvus_server_process(tmp_path_factory):
    """The session's one real Milvus server (:func:`start_milvus_server`). A second one did not
    come up beside it (180 s timeout in CI), so the reliability tests kill and restart this
    one, and leave it running."""
    server = start_milvus_server(tmp_path_factory.mktemp("milvus-server"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def milvus_server(milvus_server_process):
    """The URI of the session's Milvus server, for the server-path tests."""
    return f"http://127.0.0.1:{milvus_server_process.listen_port}"


def descendant_pids(prefix: str) -> list[int]:
    """Processes of this test's own Ray (descendants of this process) whose title starts with ``prefix``."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if not title.startswith(prefix):
                continue
            pid = int(entry)
            while pid > 1:  # walk up: is it ours?
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                if pid == me:
                    found.append(int(entry))
                    break
        except (OSError, ValueError, IndexError):
            continue
    return found
