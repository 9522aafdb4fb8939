"""What strong consistency costs a search, on a Milvus server and on milvus-lite.

``MilvusStore.search`` reads with the store's ``search_consistency``: ``strong`` (the
platform's default: a search sees every write that returned) or ``bounded`` (Serve's
default: a row written in the last few seconds may be missed; erased subjects are kept out
by the deny-list either way). On a server a strong search waits for the query nodes to
catch up with the newest timestamp. This times the same queries both ways, in one run,
against one collection of R rows per backend: sequentially (latency) and from T threads
(throughput).

Run: ``python bench/search_consistency.py [--rows 20000] [--queries 200] [--threads 8] [--uri URI]`` (~2 min;
``--uri`` uses a running server instead of starting the embedded one).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import pct  # noqa: E402
from erasure_compaction import DIM, MODEL, rows  # noqa: E402
from embedded_milvus import milvus_uri  # noqa: E402

from pixlake.platform.store import MilvusStore, build_filter  # noqa: E402

LEVELS = ("strong", "bounded")


def measure(uri: str, n: int, queries: int, threads: int) -> dict:
    """{level: (p50 ms, p95 ms, searches/s with ``threads`` threads)} over one fresh collection."""
    store = MilvusStore(uri, "consistency")
    store.ensure_collection(DIM, MODEL)
    for start in range(0, n, 5000):
        store.upsert(rows(min(5000, n - start), seed=start))
    store.wait_for_index()
    q = np.random.default_rng(1).standard_normal((queries, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    expr = build_filter("t")
    out = {}
    for level in LEVELS:
        store.search_consistency = level
        store.search(q[:5], k=10, filter=expr)  # warm
        ms = []
        for v in q:
            t = time.perf_counter()
            store.search([v], k=10, filter=expr)
            ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda v: store.search([v], k=10, filter=expr), q))
        out[level] = (pct(ms, 50), pct(ms, 95), queries / (time.perf_counter() - t))
    store.drop()
    store.close()
    return out


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--uri", help="a running Milvus server instead of starting the embedded one")
    args = ap.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["milvus-lite"] = measure(str(Path(tmp) / "lite.db"), args.rows, args.queries, args.threads)
        with milvus_uri(args.uri, Path(tmp), {}) as (uri, _):
            results["Milvus 2.3 server"] = measure(uri, args.rows, args.queries, args.threads)
    print(f"{args.rows} rows, dim {DIM}, k=10, {args.queries} queries; throughput from {args.threads} threads")
    print(f"{'backend':<18} {'level':<8} {'p50 ms':>8} {'p95 ms':>8} {'search/s':>9}")
    for backend, by_level in results.items():
        for level, (p50, p95, qps) in by_level.items():
            print(f"{backend:<18} {level:<8} {p50:8.1f} {p95:8.1f} {qps:9.1f}")
        s, b = by_level["strong"], by_level["bounded"]
        print(f"{backend:<18} {'ratio':<8} {s[0] / b[0]:7.1f}x {'':>8} {b[2] / s[2]:8.1f}x  (strong/bounded p50; bounded/strong search/s)")


if __name__ == "__main__":
    main()
