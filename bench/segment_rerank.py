"""How much re-rank repairs Milvus's per-segment IVF_PQ: a faiss simulation at 1M.

Milvus builds IVF_PQ separately per sealed segment, each trained on its own rows, and merges
the segments' top candidates. This measures that model, the index plan's own
(``pixlake.platform.index_plan.SegmentedIndex`` and ``measure``), on ``bench/scale.py``'s 1M
low-rank vectors (4 segments of 240–280k rows, as the embedded server sealed them), and
prints image-query recall@10 from the PQ ranking alone and after the exact re-rank of
``rerank_factor × 10`` candidates, for several factors. The factor-5 figure can be held
against the server's own (``bench/scale.py``); the others say what a larger re-rank buys.

Run: ``python bench/segment_rerank.py [--m 64] [--nprobe 128] [--vectors 1000000]`` (~2.5 CPU-minutes;
14 min of wall time on 2 cores shared with other work).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import clip_like  # noqa: E402

from pixlake.platform import index_plan as ip  # noqa: E402

SEGMENT_ENDS = (0.24, 0.48, 0.72, 1.0)  # the embedded server sealed 1M rows as 240k, 240k, 240k and 280k
FACTORS = (5, 10, 20, 40)


def segments(n: int) -> list[tuple[int, int]]:
    """The row ranges of :data:`SEGMENT_ENDS` for ``n`` rows."""
    ends = [round(n * e) for e in SEGMENT_ENDS]
    return list(zip([0, *ends[:-1]], ends))


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--m", type=int, default=64)
    parser.add_argument("--nlist", type=int, default=512)
    parser.add_argument("--nprobe", type=int, default=128)
    parser.add_argument("--vectors", type=int, default=1_000_000, help="rows (smaller for a quick run)")
    args = parser.parse_args(argv)
    n = args.vectors
    gen = clip_like.LowRank(max(100, n // 500))  # the same data as `scale.py --vectors N`
    base = clip_like.vectors(gen, n)
    queries = gen.sample(200, 999)
    truth = ip.exact_topk(queries, base, 10)[0]
    t0 = time.perf_counter()
    index = ip.SegmentedIndex(base, args.m, args.nlist, segments(n))
    r = ip.measure(index, base, {"image": (queries, queries, None)}, args.nprobe, 10, FACTORS, {"image": truth})["image"]
    print(f"m={args.m} nlist={args.nlist} nprobe={args.nprobe}, {n:,} rows in {len(index.parts)} segments "
          f"({time.perf_counter() - t0:.0f} s): PQ alone {r['pq']:.3f}; after re-rank at factor "
          + ", ".join(f"{f}: {r['reranked'][f]:.3f}" for f in FACTORS))


if __name__ == "__main__":
    main()
