"""How much re-rank repairs Milvus's per-segment IVF_PQ: a faiss simulation at 1M.

Milvus builds IVF_PQ separately per sealed segment, each trained on its own rows, and merges
the segments' top candidates. This builds the same in faiss on ``bench/scale.py``'s 1M
low-rank vectors (4 segments of 240–280k rows, as the embedded server sealed them), then
prints image-query recall@10 from the PQ ranking alone and after the exact re-rank of
``rerank_factor × 10`` candidates, for several factors. The factor-5 figure can be held
against the server's own (``bench/scale.py``); the others say what a larger re-rank buys.

Run: ``python bench/segment_rerank.py [--m 64] [--nprobe 128]`` (~3 min on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale  # noqa: E402

from pixlake.platform import index_plan as ip  # noqa: E402

SEGMENTS = [(0, 240_000), (240_000, 480_000), (480_000, 720_000), (720_000, 1_000_000)]
FACTORS = (5, 10, 20, 40)


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--m", type=int, default=64)
    parser.add_argument("--nlist", type=int, default=512)
    parser.add_argument("--nprobe", type=int, default=128)
    args = parser.parse_args()
    n = SEGMENTS[-1][1]
    gen = scale.LowRank(max(100, n // 500))  # the same data as `scale.py --vectors 1000000`
    base = np.concatenate([gen.sample(min(100_000, n - s), 1 + s) for s in range(0, n, 100_000)])
    queries = gen.sample(200, 999)
    truth, _ = scale.exact_topk(queries, base, 10)
    t0, scores, ids = time.perf_counter(), [], []
    for a, b in SEGMENTS:
        index = ip.build_index(base[a:b], args.m, args.nlist)
        faiss.extract_index_ivf(index).nprobe = args.nprobe
        d, i = index.search(queries, 10 * max(FACTORS))
        scores.append(d)
        ids.append(i + a)
    order = np.argsort(-np.concatenate(scores, 1), 1)
    merged = np.take_along_axis(np.concatenate(ids, 1), order, 1)

    def recall(found) -> float:
        return scale.recall([list(r) for r in found], truth)

    def reranked(f: int) -> float:
        return recall([r[np.argsort(-(base[r] @ q))][:10] for q, r in zip(queries, merged[:, :10 * f])])

    print(f"m={args.m} nlist={args.nlist} nprobe={args.nprobe}, {len(SEGMENTS)} segments "
          f"({time.perf_counter() - t0:.0f} s): PQ alone {recall(merged[:, :10]):.3f}; after re-rank at factor "
          + ", ".join(f"{f}: {reranked(f):.3f}" for f in FACTORS))


if __name__ == "__main__":
    main()
