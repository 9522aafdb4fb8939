"""Search on the embedded default as the collection grows: milvus-lite's own search against
the Serve Searcher's local copy, at each size, and what the copy costs.

One collection grows through ``--sizes`` (default 10k, 50k, 100k, 200k rows of clustered
512-d vectors, encrypted under one tenant, loaded as ``query_latency.py`` loads them). At
each size the collection is closed and opened again in this process (milvus-lite then loads
its own index), and

* **milvus-lite**: ``--queries`` text-like queries through ``QueryCollection.search(k=10)``
  with no local copy (encrypt, milvus-lite's search, decrypt, re-rank);
* **local copy**: the same queries on the collection opened as the Searcher opens it, after
  its local copy is built (``build_s``, what a ``pixlake serve`` start waits before searches
  stop going to milvus-lite), and the resident memory the copy added to this process;
* ``recall_at_10``: text-like queries against the exact plaintext top-10, through the copy.

Prints a table and the ratio of each size's p50 to the first size's, or ``--json``.
Run: ``.venv/bin/python bench/lite_growth.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from common import pct
from embedded_milvus import rss_mib
from query_latency import K, TENANT, clustered, load, opened_as_served, recall_of


def _p50(collection, queries: np.ndarray) -> float:
    lat = []
    for q in queries:
        s = time.perf_counter()
        collection.search(q, k=K, tenant=TENANT)
        lat.append((time.perf_counter() - s) * 1000)
    return round(pct(lat, 50), 2)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,50000,100000,200000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    from pixlake.platform.collection import open_collection
    from pixlake.platform.settings import Settings

    out = Path(a.out).resolve() / "lite_growth"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    settings = Settings(store={"db": str(out / "growth.db"), "collection": "growth", "local_index_min_rows": 0},
                        governance={"key_dir": str(out / "growth.governance")})
    fingerprint = "growth:0123456789abcdef"
    sizes = sorted(int(x) for x in a.sizes.split(","))
    plain, rows, results = np.empty((0, a.dim), np.float32), 0, []
    rng = np.random.default_rng(7)
    for size in sizes:
        more, centres, load_s = load(settings, size, a.dim, fingerprint, first=rows)
        plain, rows = np.concatenate([plain, more]), size
        queries = clustered(rng, centres, a.queries, 1.0)
        with open_collection(settings, fingerprint) as collection:
            collection.search(queries[0], k=K, tenant=TENANT)
            lite_p50 = _p50(collection, queries)
        before, t0 = rss_mib(os.getpid()), time.perf_counter()
        collection = opened_as_served(settings, fingerprint)
        try:
            build_s = time.perf_counter() - t0
            copy_mib = rss_mib(os.getpid()) - before
            local_p50 = _p50(collection, queries)
            recall = recall_of(collection, plain, queries)
        finally:
            collection.close()
        results.append({"rows": size, "load_s": round(load_s, 1), "milvus_lite_p50_ms": lite_p50,
                        "local_p50_ms": local_p50, "build_s": round(build_s, 1), "copy_mib": round(copy_mib),
                        "recall_at_10": round(recall, 3)})
    result = {"dim": a.dim, "sizes": results}
    if a.json:
        print(json.dumps(result))
    else:
        first = results[0]
        print(f"milvus-lite, {a.dim}-d encrypted rows, {a.queries} text-like queries, k={K}")
        print(f"{'rows':>9}{'lite p50':>10}{'growth':>8}{'copy p50':>10}{'growth':>8}{'build s':>9}{'copy MiB':>10}{'recall':>8}")
        for r in results:
            print(f"{r['rows']:>9,}{r['milvus_lite_p50_ms']:>10.1f}{r['milvus_lite_p50_ms'] / first['milvus_lite_p50_ms']:>7.1f}x"
                  f"{r['local_p50_ms']:>10.1f}{r['local_p50_ms'] / first['local_p50_ms']:>7.1f}x"
                  f"{r['build_s']:>9.1f}{r['copy_mib']:>10}{r['recall_at_10']:>8.3f}")
    return result


if __name__ == "__main__":
    main()
