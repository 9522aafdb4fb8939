"""Near-duplicate grouping speed, and what the index misses: ``pixlake dedup``'s core on synthetic vectors.

For each size N (default 100k and 1M), N unit vectors of 512-d: clustered rows (1,000
centres, as ``bench/query_latency.py`` makes them), 1% of them with 1–3 planted near-copies
(the original plus noise, cosine about 0.97). :func:`pixlake.platform.dedup.near_pairs` and
:func:`~pixlake.platform.dedup.group_pairs` run on them as the job runs them (the IVF path
above ``EXACT_MAX_ROWS``). The script prints seconds, seconds per million rows, the planted
groups found whole, and peak RSS.

``--exact-check N`` also finds the pairs of the first N rows with the exact blocked product,
and prints the share of them that the index found (its recall). Reading the rows from a
store and decrypting them is not included: the job's own figures (`pixlake dedup --json`)
include it. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

DIM = 512


def corpus(n: int, seed: int = 0) -> tuple[np.ndarray, list[frozenset]]:
    """``n`` unit vectors with planted near-copy groups; returns (vectors, planted groups)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # cosine about 0.82 to the centre, 0.67 between two rows of one centre: close, not copies
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(0, np.sqrt(0.5 / DIM), (n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    originals = rng.choice(n, size=n // 100, replace=False)
    copies = rng.integers(1, 4, len(originals))
    free = np.setdiff1d(np.arange(n), originals)
    slots = rng.choice(free, size=int(copies.sum()), replace=False)  # copies overwrite unrelated rows
    planted, at = [], 0
    for original, c in zip(originals, copies):
        members = slots[at:at + c]
        at += c
        noise = rng.normal(0, np.sqrt(0.03 / DIM), (c, DIM)).astype(np.float32)
        x[members] = x[original] + noise
        x[members] /= np.linalg.norm(x[members], axis=1, keepdims=True)
        planted.append(frozenset([int(original), *map(int, members)]))
    return x, planted


def main(argv=None) -> int:
    from pixlake.platform import dedup

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--threshold", type=float, default=dedup.DEFAULT_THRESHOLD)
    ap.add_argument("--exact-check", type=int, default=50_000, help="rows whose pairs are also found exactly (0: none)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        x, planted = corpus(n)
        t0 = time.perf_counter()
        i, j, s = dedup.near_pairs(x, args.threshold)
        t1 = time.perf_counter()
        groups = dedup.group_pairs(n, i, j, s)
        t2 = time.perf_counter()
        found = {frozenset([g.representative, *(m for m, _ in g.members)]) for g in groups}
        whole = sum(p in found for p in planted)
        row = {"rows": n, "pairs": len(i), "groups": len(groups), "planted": len(planted), "planted_found_whole": whole,
               "pairs_s": round(t1 - t0, 2), "group_s": round(t2 - t1, 2),
               "s_per_million": round((t2 - t0) / n * 1e6, 1), "path": "exact" if n <= dedup.EXACT_MAX_ROWS else "ivf"}
        if args.exact_check and n > dedup.EXACT_MAX_ROWS:
            m = min(n, args.exact_check)
            exact_i, exact_j, _ = (np.concatenate(p) for p in zip(*dedup._exact_pairs(dedup.unit_rows(x[:m]), args.threshold)))
            keep = exact_i < exact_j
            exact = set(zip(exact_i[keep].tolist(), exact_j[keep].tolist()))
            inside = (i < m) & (j < m)
            by_index = set(zip(i[inside].tolist(), j[inside].tolist()))
            row["index_recall_on_first_rows"] = round(len(exact & by_index) / max(len(exact), 1), 4)
            row["exact_check_rows"] = m
        row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        results.append(row)
        print(f"{n:>9,} rows ({row['path']}): pairs {row['pairs_s']:7.1f} s, groups {row['group_s']:5.1f} s, "
              f"{row['s_per_million']:7.1f} s per million rows; {row['groups']:,} groups, {whole:,}/{len(planted):,} planted "
              f"groups found whole" + (f"; index recall {row['index_recall_on_first_rows']:.4f} on the first "
                                       f"{row['exact_check_rows']:,} rows' exact pairs" if "exact_check_rows" in row else "")
              + f"; peak RSS {row['peak_rss_gib']} GiB", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
