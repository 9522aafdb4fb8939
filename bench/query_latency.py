"""Query latency and recall: pixlake's search in-process and over HTTP, encryption on.

* **Load** (timed apart): ``--rows`` clustered vectors of the encoder's width (1,000 random
  unit centres + gaussian noise, re-normalised), written through the store as pixlake writes
  them: encrypted under tenant ``acme``'s key (100 subjects), sources sealed. ``--backend
  lite`` writes a fresh milvus-lite file ``<out>/query.db``; ``--backend server`` a fresh
  collection on the Milvus server at ``--uri``.
* **Recall** (in-process): 50 image-like queries (a stored vector plus noise) and 50
  text-like ones (a cluster centre plus more noise); recall@10 of pixlake's answer (encrypted
  search, decrypt, exact re-rank) against the exact top-10 over the plaintext vectors.
* **in-process**: the Searcher's path in this process, sequentially: ``embed_texts`` of a
  query text, then ``QueryCollection.search(k=10, tenant="acme")`` on the collection opened
  as the Searcher opens it (on milvus-lite with its local index, built before timing).
* **HTTP**: local Ray, ``pixlake.serve.run.start`` on a free loopback port (one key, rate
  limits out of the way), warm-up, then ``--requests`` POST ``/v1/search`` ``{"text", "k": 10}``
  at each concurrency in ``--levels`` (default 1 and 16), one ``requests.Session`` per
  thread. Latency is client wall time; a non-200 is an error.
* ``server_rss_mib`` (server backend): the Milvus server's resident memory after the
  collection is loaded and after the HTTP load test (found by its listening port).

``--json`` prints one JSON object instead of the table.
Run: ``.venv/bin/python bench/query_latency.py --backend lite --rows 100000``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

from common import free_port, pct

TENANT, SUBJECTS, BATCH, K = "acme", 100, 5_000, 10


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int, noise: float) -> np.ndarray:
    """``n`` unit vectors: random centres plus gaussian noise of ``noise`` per unit length."""
    dim = centres.shape[1]
    v = centres[rng.integers(0, len(centres), n)] + noise / np.sqrt(dim) * rng.standard_normal((n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def load(settings, rows: int, dim: int, fingerprint: str, seed: int = 0, first: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Write encrypted records ``first`` to ``rows`` (from 0: into a fresh collection);
    returns (their plaintext vectors, the centres, seconds)."""
    from pixlake.platform import records as R
    from pixlake.platform.collection import open_collection

    centres = np.random.default_rng(seed).standard_normal((1000, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng([seed, first])
    plain = np.empty((rows - first, dim), np.float32)
    t0 = time.perf_counter()
    with open_collection(settings) as collection:
        store, gov = collection.store, collection.governance
        if store.exists() and first == 0:
            store.drop()
        store.ensure_collection(dim, fingerprint)
        crypto = gov.tenant_crypto(TENANT)
        subjects = [crypto.pseudonym(f"subject-{i}") for i in range(SUBJECTS)]
        keys = gov.data_keys(TENANT, subjects)
        for start in range(first, rows, BATCH):
            n = min(BATCH, rows - start)
            plain[start - first:start - first + n] = clustered(rng, centres, n, 0.3)
            records = []
            for j in range(n):
                i = start + j
                chash = f"{i:064x}"
                subject = subjects[i % SUBJECTS]
                records.append({R.ID: R.row_id(TENANT, subject, chash), R.TENANT: TENANT, R.SUBJECT: subject,
                                R.CONTENT_HASH: chash, R.SOURCE: f"synthetic://{i}", R.MODEL: fingerprint,
                                R.META: {"label": f"l{i % 16}"}, R.VECTOR: plain[i - first].tolist()})
            store.upsert(crypto.protect(records, keys))
            if (start + n) % 100_000 == 0 or start + n == rows:
                print(f"  loaded {start + n:,}/{rows:,} rows ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        store.flush()
    return plain, centres, time.perf_counter() - t0


def opened_as_served(settings, fingerprint: str):
    """The collection opened as the Serve Searcher opens it: on a server once its index covers
    every row, on milvus-lite with the Searcher's local copy built."""
    from pixlake.platform.collection import open_collection
    from pixlake.platform.settings import LITE

    collection = open_collection(settings, fingerprint)
    store = collection.store
    store.wait_for_index(timeout=3600)  # a server: searched through its built index, not growing segments
    store.keep_local_index(settings.store.local_index_min_rows)
    if store.backend == LITE and store.count() >= settings.store.local_index_min_rows:
        while store.describe()["local_index_rows"] is None:
            time.sleep(0.5)
    return collection


def recall(collection, plain: np.ndarray, centres: np.ndarray, seed: int = 1) -> dict:
    """recall@10 of pixlake's answers against the exact plaintext top-10."""
    rng = np.random.default_rng(seed)
    queries = {"image": plain[rng.integers(0, len(plain), 50)] + 0.05 / np.sqrt(plain.shape[1]) * rng.standard_normal((50, plain.shape[1])),
               "text": clustered(rng, centres, 50, 1.0)}
    return {kind: round(recall_of(collection, plain, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)), 4)
            for kind, q in queries.items()}


def recall_of(collection, plain: np.ndarray, queries: np.ndarray) -> float:
    """Mean recall@10 of pixlake's answers to unit ``queries`` against the exact top-10 of ``plain``
    (rows are told apart by their ``synthetic://<row>`` source)."""
    found = []
    for v in queries:
        exact = set(np.argsort(-(plain @ v))[:K].tolist())
        got = {int(h["source"].rsplit("/", 1)[1]) for h in collection.search(v, k=K, tenant=TENANT)}
        found.append(len(exact & got) / K)
    return float(np.mean(found))


def in_process(collection, encoder, n: int) -> dict:
    for i in range(5):
        collection.search(encoder.embed_texts([f"warm up {i}"])[0], k=K, tenant=TENANT)
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        s = time.perf_counter()
        collection.search(encoder.embed_texts([f"a photo of thing {i}"])[0], k=K, tenant=TENANT)
        lat.append((time.perf_counter() - s) * 1000)
    return {"p50_ms": round(pct(lat, 50), 2), "p99_ms": round(pct(lat, 99), 2),
            "qps": round(n / (time.perf_counter() - t0), 1)}


def http_level(url: str, c: int, n: int, offset: int) -> dict:
    import requests

    lat, errors, lock, counter = [], [0], threading.Lock(), iter(range(n))

    def worker() -> None:
        with requests.Session() as sess:
            sess.headers["Authorization"] = "Bearer kb"
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                s = time.perf_counter()
                try:
                    ok = sess.post(f"{url}/v1/search", json={"text": f"a photo of thing {offset + i}", "k": K},
                                   timeout=60).status_code == 200
                except requests.RequestException:
                    ok = False
                with lock:
                    lat.append((time.perf_counter() - s) * 1000)
                    errors[0] += not ok

    threads = [threading.Thread(target=worker) for _ in range(c)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"p50_ms": round(pct(lat, 50), 2), "p99_ms": round(pct(lat, 99), 2),
            "qps": round(n / (time.perf_counter() - t0), 1), "errors": errors[0]}


def wait_for_local_index(url: str) -> None:
    """Until the Searcher says it searches through its local index (``/v1/collections``)."""
    import requests

    while True:
        try:
            described = requests.get(f"{url}/v1/collections", headers={"Authorization": "Bearer kb"}, timeout=30).json()
            if described["collections"][0].get("local_index_rows"):
                return
        except (requests.RequestException, KeyError, IndexError, ValueError):
            pass
        time.sleep(1)


def server_rss_mib(uri: str):
    """Resident MiB of the process listening on the server URI's port (None if not found here)."""
    import psutil

    port = int(uri.rsplit(":", 1)[1].split("/")[0])
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return round(psutil.Process(conn.pid).memory_info().rss / 2**20, 1)
    return None


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=("lite", "server"), default="lite")
    ap.add_argument("--uri", default="http://127.0.0.1:19530", help="the Milvus server (--backend server)")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--model", default="pixlake-tiny-512", help="query encoder (its width is the vectors'; default 512-d)")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--requests", type=int, default=300, help="requests per HTTP level and in-process queries")
    ap.add_argument("--levels", default="1,16")
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    a = ap.parse_args(argv)

    import ray

    from pixlake.platform.ray_runtime import start_ray

    from pixlake.platform.encoder import load_encoder
    from pixlake.serve import run
    from pixlake.serve.auth import parse_api_keys
    from pixlake.serve.config import ServeSettings

    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    db = a.uri if a.backend == "server" else str(out / "query.db")
    if a.backend == "lite":
        shutil.rmtree(out / "query.db", ignore_errors=True)
        (out / "query.db").unlink(missing_ok=True)
    if a.backend == "server":  # a server deployment never creates its master key: this run's throwaway one
        from pixlake.platform.governance.master_key import load_master_key

        load_master_key(out / "query.governance", create=True)
    encoder = load_encoder(a.model, a.pretrained, device="cpu")
    serve = ServeSettings(db=db, collection="bench_query", model=a.model, pretrained=a.pretrained,
                          keys=parse_api_keys("kb:acme:search"), rate_per_s=1e6, rate_burst=10**6,
                          governance={"key_dir": str(out / "query.governance")})
    settings = serve.platform_settings()
    plain, centres, load_s = load(settings, a.rows, encoder.dim, encoder.fingerprint)
    collection = opened_as_served(settings, encoder.fingerprint)
    try:
        rss_loaded = server_rss_mib(db) if a.backend == "server" else None
        rec = recall(collection, plain, centres)
        base = in_process(collection, encoder, a.requests)
    finally:
        collection.close()  # milvus-lite: one process per database, and the Searcher opens it next

    levels = [int(x) for x in a.levels.split(",") if x.strip()]
    http = {}
    start_ray("local")
    try:
        url = run.start(serve, "127.0.0.1", free_port())
        if a.backend == "lite" and a.rows >= settings.store.local_index_min_rows:
            wait_for_local_index(url)
        http_level(url, 4, 40, 10**6)  # warm-up
        for i, c in enumerate(levels):
            http[f"c{c}"] = http_level(url, c, a.requests, (i + 1) * 10**5)
        rss_after = server_rss_mib(db) if a.backend == "server" else None
        run.stop()
    finally:
        ray.shutdown()

    result = {"backend": a.backend, "rows": a.rows, "dim": encoder.dim, "load_s": round(load_s, 1),
              "recall_at_10": rec, "in_process": base, "http": http,
              "server_rss_mib": None if a.backend == "lite" else {"loaded": rss_loaded, "after_load_test": rss_after}}
    if a.json:
        print(json.dumps(result))
    else:
        print(f"{a.backend}, {a.rows:,} rows x {encoder.dim}-d, encrypted (load {load_s:.0f} s); "
              f"recall@10 image {rec['image']:.3f}, text {rec['text']:.3f}")
        print(f"{'contender':<14}{'p50 ms':>9}{'p99 ms':>9}{'qps':>9}{'errors':>8}")
        print(f"{'in-process':<14}{base['p50_ms']:>9.1f}{base['p99_ms']:>9.1f}{base['qps']:>9.1f}{0:>8}")
        for level, r in http.items():
            print(f"{'HTTP ' + level:<14}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['qps']:>9.1f}{r['errors']:>8}")
        if "c1" in http:
            print(f"HTTP p50 / in-process p50 at concurrency 1: {http['c1']['p50_ms'] / base['p50_ms']:.2f}x")
        if result["server_rss_mib"]:
            print(f"server RSS: {rss_loaded} MiB loaded, {rss_after} MiB after the load test")
    return result


if __name__ == "__main__":
    main()
