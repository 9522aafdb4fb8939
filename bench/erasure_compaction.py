"""What an erasure's compaction step costs on a Milvus server as collections multiply.

An erasure compacts every pixlake collection of the database (versions kept for rollback
count too). The embedded 2.3 server takes 10-20 s per compaction job however small, so
``MilvusStore.compact`` starts every job before it waits. This prints, on the embedded
server in one run, the step one collection at a time (what it did before) beside all at
once, for N collections of R rows with a subject's rows deleted from each.

Run: ``python bench/erasure_compaction.py [--collections 4] [--rows 2000] [--uri URI]`` (~2 min on 2 cores;
``--uri`` uses a running server instead of starting the embedded one).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from embedded_milvus import milvus_uri  # noqa: E402

from pixlake.platform import records as R  # noqa: E402
from pixlake.platform.store import MilvusStore  # noqa: E402

DIM, MODEL = 64, "bench"


def rows(n: int, seed: int) -> list[dict]:
    """``n`` records of 8 subjects with every field the store's schema has."""
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    out = []
    for i in range(n):
        chash, subject = f"{seed:04d}{i:028x}", f"subject{i % 8:025d}"
        out.append({R.ID: R.row_id("t", subject, chash), R.TENANT: "t", R.SUBJECT: subject, R.CONTENT_HASH: chash,
                    R.SOURCE: f"/images/{i}.jpg", R.MODEL: MODEL, R.META: {}, R.NONCE: "", R.KEY_ID: "", R.VECTOR: v[i].tolist()})
    return out


def fill(store: MilvusStore, names: list[str], n: int) -> None:
    """Fresh collections of ``n`` rows each, indexed, one subject's rows deleted (what the erasure leaves)."""
    for i, name in enumerate(names):
        s = store.for_collection(name)
        s.ensure_collection(DIM, MODEL)
        s.upsert(rows(n, seed=i))
        s.wait_for_index()
        s.delete(filter=f'{R.SUBJECT} == "subject{0:025d}"')
        s.close()


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collections", type=int, default=4)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--uri", help="a running Milvus server instead of starting the embedded one")
    args = ap.parse_args(argv)
    names = [f"bench_c{i}" for i in range(args.collections)]
    with tempfile.TemporaryDirectory() as tmp, milvus_uri(args.uri, Path(tmp), {}) as (uri, _):
        store = MilvusStore(uri, names[0])
        fill(store, names, args.rows)
        t = time.perf_counter()
        serial = [store.compact([name]) for name in names]
        one_at_a_time = time.perf_counter() - t
        fill(store, names, args.rows)  # deletes again, so the second compaction has work too
        t = time.perf_counter()
        together = store.compact(names)
        all_at_once = time.perf_counter() - t
        for name in names:  # a server given by --uri outlives this run
            store.for_collection(name).drop()
        store.close()
    print(f"{args.collections} collections x {args.rows} rows, 1/8 deleted from each, embedded Milvus 2.3 server")
    print(f"  one at a time : {one_at_a_time:6.1f} s  outcomes {[o for d in serial for o in d.values()]}")
    print(f"  all at once   : {all_at_once:6.1f} s  outcomes {list(together.values())}")
    print(f"  ratio         : {one_at_a_time / all_at_once:6.2f}x")


if __name__ == "__main__":
    main()
