"""Live ingest under load: uploads at a fixed offered rate (open loop) while searches run,
against ``pixlake serve`` over HTTP, on milvus-lite and on the embedded Milvus server.

Per backend, one run:

1. A collection of ``--base`` images is embedded by the batch job (tiny model, encrypted),
   then ``pixlake.serve.run.start`` serves it on a free loopback port (local Ray).
2. **Quiet**: text searches at ``--search-rate`` per second for ``--seconds``: p50/p99.
3. **Loaded**: the same searches, and at the same time uploads (``POST /v1/items``, JSON,
   distinct synthetic images) offered at ``--rate`` per second, at most ``--concurrency`` in
   flight (an upload due while that many are in flight waits: that shows as a lower sustained
   rate). Each created upload is then searched for with its own image, every 10 ms, until a
   search returns it: its **freshness**, measured by the client from the 2xx.
4. Printed: uploads/s sustained (created over the loaded window), upload p50/p99, freshness
   p50/p99, errors by status, and search p50/p99 beside the quiet baseline with the ratio.

Targets (issue 22, this 2-core machine): freshness p99 <= 1 s on both backends; >= 20
uploads/s sustained with the tiny model at concurrency 8 with no errors; search p99 during
uploads <= 2x quiet. Nothing is asserted.

Run: ``.venv/bin/python bench/ingest.py [--backends lite,server] [--rate 20] [--seconds 20]``;
``--quick`` is the smoke run (lite only, 5 s, a few uploads per second).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, pct  # noqa: E402
from embedded_milvus import milvus_uri  # noqa: E402

KEY = "kb"


def image_bytes(i: int) -> bytes:
    """A distinct small PNG per ``i`` (seeded noise and a gradient: no two alike)."""
    from PIL import Image

    rng = np.random.default_rng(10_000 + i)
    pixels = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    pixels[:, :, i % 3] = np.linspace(0, 255, 48, dtype=np.uint8)[None, :]
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def post(session, url: str, path: str, body: dict):
    return session.post(url + path, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


class Searches(threading.Thread):
    """Text searches at a fixed rate (open loop, each on a pool thread); latencies and errors."""

    def __init__(self, url: str, rate: float, seconds: float):
        super().__init__(daemon=True)
        self.url, self.rate, self.seconds = url, rate, seconds
        self.ms: list[float] = []
        self.errors: Counter = Counter()

    def one(self, i: int) -> None:
        import requests

        started = time.perf_counter()
        try:
            r = post(requests, self.url, "/v1/search", {"text": f"a photo {i}", "k": 10})
            if r.status_code == 200:
                self.ms.append((time.perf_counter() - started) * 1000)
            else:
                self.errors[r.status_code] += 1
        except requests.RequestException as e:
            self.errors[type(e).__name__] += 1

    def run(self) -> None:
        with ThreadPoolExecutor(16) as pool:
            start, i = time.monotonic(), 0
            while time.monotonic() - start < self.seconds:
                pool.submit(self.one, i)
                i += 1
                time.sleep(max(0.0, start + i / self.rate - time.monotonic()))


class Uploads(threading.Thread):
    """Uploads offered at a fixed rate, at most ``concurrency`` in flight; each created one
    then searched for until a search returns it (freshness, from the client's 2xx)."""

    def __init__(self, url: str, rate: float, seconds: float, concurrency: int, first: int):
        super().__init__(daemon=True)
        self.url, self.rate, self.seconds, self.first = url, rate, seconds, first
        self.slots = threading.Semaphore(concurrency)
        self.ms: list[float] = []
        self.fresh_ms: list[float] = []
        self.never_found = 0
        self.errors: Counter = Counter()
        self.created = 0
        self.window = 0.0

    def one(self, i: int) -> None:
        import requests

        try:
            data = image_bytes(self.first + i)
            started = time.perf_counter()
            try:
                r = post(requests, self.url, "/v1/items", {"image": base64.b64encode(data).decode()})
            except requests.RequestException as e:
                self.errors[type(e).__name__] += 1
                return
            answered = time.perf_counter()
            if r.status_code != 201:
                self.errors[r.status_code] += 1
                return
            self.ms.append((answered - started) * 1000)
            self.created += 1
        finally:
            self.slots.release()
        self.freshness(r.json()["id"], data, answered)

    def freshness(self, item_id: str, data: bytes, answered: float) -> None:
        import requests

        body = {"image": base64.b64encode(data).decode(), "k": 3}
        while time.perf_counter() - answered < 30:
            r = post(requests, self.url, "/v1/search", body)
            if r.status_code == 200 and any(h["id"] == item_id for h in r.json()["results"]):
                self.fresh_ms.append((time.perf_counter() - answered) * 1000)
                return
            time.sleep(0.01)
        self.never_found += 1

    def run(self) -> None:
        with ThreadPoolExecutor(64) as pool:
            start, i = time.monotonic(), 0
            while time.monotonic() - start < self.seconds:
                self.slots.acquire()  # at most `concurrency` uploads in flight: a due one waits
                pool.submit(self.one, i)
                i += 1
                time.sleep(max(0.0, start + i / self.rate - time.monotonic()))
            self.window = time.monotonic() - start


def serve_base(backend: str, db: str, out: Path, base: int):
    """Embed ``base`` images into the collection and return the Serve settings for it."""
    from pixlake.platform.corpus import write_corpus
    from pixlake.platform.governance.keys import load_master_key
    from pixlake.platform.pipeline.job import run_embed_job
    from pixlake.platform.settings import load_settings
    from pixlake.serve.auth import parse_api_keys
    from pixlake.serve.config import ServeSettings

    keys = out / f"{backend}.governance"
    load_master_key(keys, create=True)  # a server deployment never creates one: this run's own
    collection = f"bench_ingest_{int(time.time())}"
    images = out / "base"
    if not images.exists():
        write_corpus(images, base, seed=3)
    settings = load_settings(overrides={"store": {"db": db, "collection": collection},
                                        "encoder": {"model": "pixlake-tiny", "pretrained": "none"},
                                        "governance": {"key_dir": str(keys), "beta": 0.05}})
    report = run_embed_job(str(images / "manifest.parquet"), settings)
    return ServeSettings(db=db, collection=collection, model="pixlake-tiny", pretrained="none",
                         keys=parse_api_keys(f"{KEY}:acme:search+ingest"), rate_per_s=1e6, rate_burst=10**6,
                         governance={"key_dir": str(keys), "beta": 0.05}), report.embedded


def measure(backend: str, db: str, out: Path, a) -> dict:
    from pixlake.serve import run

    serve, rows = serve_base(backend, db, out, a.base)
    url = run.start(serve, "127.0.0.1", free_port())
    try:
        Searches(url, 4, 2).run()  # warm-up
        quiet = Searches(url, a.search_rate, a.seconds)
        quiet.run()
        loaded = Searches(url, a.search_rate, a.seconds)
        uploads = Uploads(url, a.rate, a.seconds, a.concurrency, first=0)
        loaded.start()
        uploads.start()
        loaded.join()
        uploads.join()
        deadline = time.monotonic() + 35  # the last uploads' freshness probes finish
        while len(uploads.fresh_ms) + uploads.never_found < uploads.created and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        run.stop()
    return {"backend": backend, "base_rows": rows, "offered_per_s": a.rate, "concurrency": a.concurrency,
            "created": uploads.created, "sustained_per_s": round(uploads.created / max(uploads.window, 1e-9), 2),
            "upload_p50_ms": pct(uploads.ms, 50), "upload_p99_ms": pct(uploads.ms, 99),
            "fresh_p50_ms": pct(uploads.fresh_ms, 50), "fresh_p99_ms": pct(uploads.fresh_ms, 99),
            "never_found": uploads.never_found, "upload_errors": dict(uploads.errors),
            "search_quiet_p50_ms": pct(quiet.ms, 50), "search_quiet_p99_ms": pct(quiet.ms, 99),
            "search_loaded_p50_ms": pct(loaded.ms, 50), "search_loaded_p99_ms": pct(loaded.ms, 99),
            "search_errors": dict(quiet.errors + loaded.errors)}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="lite,server", help="lite, server or both (default both)")
    ap.add_argument("--uri", help="a running Milvus server instead of starting the embedded one")
    ap.add_argument("--rate", type=float, default=20.0, help="uploads offered per second (default 20)")
    ap.add_argument("--concurrency", type=int, default=8, help="uploads in flight at most (default 8)")
    ap.add_argument("--search-rate", type=float, default=5.0, help="searches per second (default 5)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the quiet and loaded windows (default 20)")
    ap.add_argument("--base", type=int, default=200, help="images the batch job embeds first (default 200)")
    ap.add_argument("--json", action="store_true", help="print one JSON object per backend")
    ap.add_argument("--quick", action="store_true", help="lite only, 5 s windows, 4 uploads/s, 40 base images")
    a = ap.parse_args(argv)
    if a.quick:
        a.backends, a.seconds, a.rate, a.base, a.search_rate = "lite", 5.0, 4.0, 40, 2.0
    import ray

    from pixlake.platform.ray_runtime import init_ray

    init_ray()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for backend in [b.strip() for b in a.backends.split(",") if b.strip()]:
            if backend == "lite":
                results.append(measure("lite", str(out / "ingest.db"), out, a))
            else:
                with milvus_uri(a.uri, out / "milvus", {}) as (uri, _):
                    results.append(measure("server", uri, out, a))
            shutil.rmtree(out / "base", ignore_errors=True)
    ray.shutdown()
    for r in results:
        if a.json:
            print(json.dumps(r))
            continue
        ratio = r["search_loaded_p99_ms"] / r["search_quiet_p99_ms"]
        print(f"{r['backend']}: {r['base_rows']} rows embedded first; uploads offered {r['offered_per_s']:g}/s at "
              f"concurrency {r['concurrency']}")
        print(f"  uploads    {r['created']} created, {r['sustained_per_s']:.2f}/s sustained; p50 {r['upload_p50_ms']:.1f} ms, "
              f"p99 {r['upload_p99_ms']:.1f} ms; errors {r['upload_errors'] or 'none'}")
        print(f"  freshness  p50 {r['fresh_p50_ms']:.1f} ms, p99 {r['fresh_p99_ms']:.1f} ms; never found {r['never_found']}")
        print(f"  search     quiet p50 {r['search_quiet_p50_ms']:.1f} ms p99 {r['search_quiet_p99_ms']:.1f} ms; during "
              f"uploads p50 {r['search_loaded_p50_ms']:.1f} ms p99 {r['search_loaded_p99_ms']:.1f} ms; p99 ratio "
              f"{ratio:.2f}; errors {r['search_errors'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
