"""Query latency: HTTP search through the Ray Serve app against the in-process query path.

* **Setup** (not timed): a fresh milvus-lite db ``<out>/query.db`` with ``--rows`` synthetic
  records of tenant ``acme`` (seeded vectors clustered like real embeddings: 1,000 random
  unit centres + gaussian noise, re-normalised; every record field filled), inserted in
  batches of 5,000 into a collection made by ``ensure_collection(dim, fingerprint)`` of the
  ``--model``/``--pretrained`` encoder.
* **in-process** (baseline): one process, sequential; per query text
  ``encoder.embed_texts([q])[0]`` + ``QueryCollection.search(v, k=10, tenant="acme")`` on the
  collection ``pixlake.platform.query.open_collection`` opens (the Searcher replica's query
  path: encrypt the query, fetch ``rerank_factor × k`` candidates, decrypt, re-rank; the
  synthetic rows are plaintext). The collection is closed afterwards (milvus-lite allows
  one process per db, and the Searcher replica must open it next).
* **HTTP**: local Ray (2 CPUs), ``pixlake.serve.run.start`` on a free loopback port with one
  key ``kb`` (tenant acme, scope search) and rate limits out of the way; ~10 warm-up
  requests; then per concurrency level ``c`` in ``--levels``: ``--requests`` POST
  ``/v1/search`` ``{"text": ..., "k": 10}`` from ``c`` threads (one ``requests.Session``
  each). Latency = client wall time per request; non-200 answers count as errors;
  req/s = requests / wall time of the level.

Nothing is asserted: the script prints a table (and writes JSON with ``--json PATH``).

Run: ``.venv/bin/python bench/query_latency.py`` (100k rows, pixlake-tiny), or smaller,
e.g. ``--rows 20000 --requests 100``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from common import free_port, pct

TARGET = "HTTP p50 <= 1.5x in-process p50 at concurrency 1, zero errors at concurrency 32"
COLLECTION = "images"
BATCH = 5_000


def build_db(db: Path, rows: int, encoder, seed: int = 0) -> float:
    """Fill a fresh collection with clustered synthetic records; returns seconds taken."""
    from pixlake.platform import records as R
    from pixlake.platform.store import MilvusStore

    if db.is_dir():
        shutil.rmtree(db)
    elif db.exists():
        db.unlink()
    for extra in db.parent.glob(f".{db.name}*"):  # milvus-lite lock file, if any
        shutil.rmtree(extra, ignore_errors=True) if extra.is_dir() else extra.unlink(missing_ok=True)
    db.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dim, fp = encoder.dim, encoder.fingerprint
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    t0 = time.perf_counter()
    store = MilvusStore(str(db), COLLECTION)
    try:
        store.ensure_collection(dim, fp)
        for start in range(0, rows, BATCH):
            n = min(BATCH, rows - start)
            vecs = centres[rng.integers(0, len(centres), n)] + 0.3 / np.sqrt(dim) * rng.standard_normal((n, dim))
            vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
            batch = []
            for j in range(n):
                i = start + j
                batch.append({
                    R.ID: f"{i:032x}", R.TENANT: "acme", R.SUBJECT: f"{i * 7919:032x}",
                    R.CONTENT_HASH: f"{i * 104729:064x}"[-64:], R.SOURCE: f"synthetic://{i}", R.MODEL: fp,
                    R.META: {"label": f"l{i % 16}"}, R.NONCE: "", R.KEY_ID: "", R.VECTOR: vecs[j].tolist(),
                })
            store.upsert(batch)
            done = start + n
            if done == n or done % 20_000 == 0 or done == rows:
                print(f"  inserted {done:,}/{rows:,} rows ({time.perf_counter() - t0:.1f} s)", flush=True)
    finally:
        store.close()
    return time.perf_counter() - t0


def in_process(settings, encoder, n: int) -> dict:
    """The Searcher's query path in this process, sequentially: embed the text, search tenant acme."""
    from pixlake.platform.query import open_collection

    collection = open_collection(settings, encoder.fingerprint)
    try:
        for i in range(5):  # warm-up
            collection.search(encoder.embed_texts([f"warm up {i}"])[0], k=10, tenant="acme")
        lat = []
        t0 = time.perf_counter()
        for i in range(n):
            s = time.perf_counter()
            hits = collection.search(encoder.embed_texts([f"a photo of thing {i}"])[0], k=10, tenant="acme")
            lat.append((time.perf_counter() - s) * 1000)
            if len(hits) != 10:
                print(f"  warning: {len(hits)} hits for query {i}")
        wall = time.perf_counter() - t0
    finally:
        collection.close()
    return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "per_s": n / wall, "errors": 0, "n": n}


def http_level(url: str, c: int, n: int, offset: int) -> dict:
    import requests

    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(n))

    def worker() -> None:
        sess = requests.Session()
        sess.headers["Authorization"] = "Bearer kb"
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            s = time.perf_counter()
            try:
                ok = sess.post(f"{url}/v1/search", json={"text": f"a photo of thing {offset + i}", "k": 10}, timeout=60).status_code == 200
            except requests.RequestException:
                ok = False
            ms = (time.perf_counter() - s) * 1000
            with lock:
                lat.append(ms)
                errors[0] += not ok

    threads = [threading.Thread(target=worker) for _ in range(c)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "per_s": n / wall, "errors": errors[0], "n": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--model", default="pixlake-tiny")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--requests", type=int, default=200, help="requests per level (and in-process queries)")
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--json", dest="json_path")
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",") if x.strip()]

    import ray

    from pixlake.platform.encoder import load_encoder
    from pixlake.serve import run
    from pixlake.serve.auth import parse_api_keys
    from pixlake.serve.config import ServeSettings

    db = Path(a.out).resolve() / "query.db"
    encoder = load_encoder(a.model, a.pretrained, device="cpu")
    print(f"setup: {a.rows:,} rows, {a.model}/{a.pretrained} (dim {encoder.dim}, {encoder.fingerprint}) -> {db}")
    setup_s = build_db(db, a.rows, encoder)
    # One configuration for both contenders: the Searcher replica opens what this describes.
    settings = ServeSettings(
        db=str(db), collection=COLLECTION, model=a.model, pretrained=a.pretrained,
        keys=parse_api_keys("kb:acme:search"), rate_per_s=1e6, rate_burst=10**6,
    )

    print(f"in-process: {a.requests} sequential queries")
    base = in_process(settings.platform_settings(), encoder, a.requests)

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    results: dict[int, dict] = {}
    try:
        url = run.start(settings, "127.0.0.1", free_port())
        http_level(url, 1, 10, offset=10**6)  # warm-up
        for i, c in enumerate(levels):
            print(f"HTTP: concurrency {c}, {a.requests} requests", flush=True)
            results[c] = http_level(url, c, a.requests, offset=(i + 1) * 10**5)
        run.stop()
    finally:
        ray.shutdown()

    print()
    print(f"rows {a.rows:,}  model {a.model}/{a.pretrained}  requests/level {a.requests}  setup {setup_s:.0f} s")
    print(f"{'contender':<16}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'errors':>8}")
    print(f"{'in-process':<16}{base['p50_ms']:>9.1f}{base['p99_ms']:>9.1f}{base['per_s']:>9.1f}{base['errors']:>8}")
    for c, r in results.items():
        print(f"{f'HTTP c={c}':<16}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['per_s']:>9.1f}{r['errors']:>8}")
    ratio = results[1]["p50_ms"] / base["p50_ms"] if 1 in results else None
    if ratio is not None:
        print(f"HTTP p50 / in-process p50 at concurrency 1: {ratio:.2f}x")
    print(f"target: {TARGET}")
    if a.json_path:
        out = {"rows": a.rows, "model": a.model, "pretrained": a.pretrained, "requests": a.requests,
               "setup_s": setup_s, "in_process": base, "http": {str(c): r for c, r in results.items()},
               "ratio_c1": ratio, "target": TARGET}
        Path(a.json_path).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
