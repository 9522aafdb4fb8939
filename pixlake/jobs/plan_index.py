"""Index planning: ``python -m pixlake.jobs.plan_index --db URI --collection NAME [flags]``.

Samples a collection's rows (as stored, and decrypted), measures faiss IVF-PQ at every code
size, one index per Milvus segment as a server builds it, for image→image and text→image
queries separately, with and without the store's exact re-rank at several re-rank factors,
and saves the smallest code (then the cheapest re-rank factor and nprobe) that meets the
recall target. A Milvus server applies
it when it builds a collection's index (``store.index_plan``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from pixlake.jobs.common import add_encoder_flags, add_store_flags, emit, run_main


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    """Flags of the planner (also mounted as ``pixlake plan-index``)."""
    parser = parser or argparse.ArgumentParser(prog="python -m pixlake.jobs.plan_index", description=__doc__)
    add_store_flags(parser)
    add_encoder_flags(parser)
    parser.add_argument("--tenant", default="default", help="tenant whose rows are sampled (default 'default')")
    parser.add_argument("--sample", type=int, default=20_000, help="rows the index is trained on (default 20000)")
    parser.add_argument("--measure-rows", type=int, default=200_000,
                        help="rows recall is measured on, at most the collection's (default 200000): more than "
                        "the training sample, since recall falls as rows get denser")
    parser.add_argument("--queries", type=int, default=500, help="image queries, and at most this many text queries")
    parser.add_argument("--text-field", default="caption", help="metadata field whose values are the text queries")
    parser.add_argument("--text-file", type=Path, help="text queries, one per line (instead of --text-field)")
    parser.add_argument("--target", type=float, default=0.95, help="recall@k needed after re-rank (default 0.95)")
    parser.add_argument("-k", type=int, default=10, help="k of recall@k (default 10)")
    parser.add_argument("--segment-rows", type=int,
                        help="rows per sealed Milvus segment (default: what a 512 MB segment, Milvus's "
                        "dataCoord.segment.maxSize, holds of pixlake rows: ~152k at 512-d); recall is measured one "
                        "segment index at a time, as Milvus searches")
    parser.add_argument("--max-rerank-factor", type=int, default=40,
                        help="largest re-rank factor tried (candidates read back and re-ranked per hit; default 40)")
    parser.add_argument("--opq", action="store_true", help="also measure an OPQ rotation (faiss only, for comparison)")
    parser.add_argument("--out", type=Path, default=Path("index-plan.json"), help="plan file (default index-plan.json)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    """Plan; returns the exit code."""
    from pixlake.platform.index_plan import plan_summary, plan_from_collection
    from pixlake.platform.settings import load_settings

    settings = load_settings(args.config, {"store": {"db": args.db, "collection": args.collection},
                                           "encoder": {"model": args.model, "pretrained": args.pretrained}})
    texts = args.text_file.read_text().splitlines() if args.text_file else None
    plan = plan_from_collection(settings, args.tenant, sample=args.sample, measure_rows=args.measure_rows,
                                queries=args.queries, texts=texts,
                                text_field=args.text_field, target=args.target, k=args.k, opq=args.opq,
                                segment_rows=args.segment_rows, max_rerank_factor=args.max_rerank_factor)
    plan.save(args.out)
    emit(json.dumps(plan.to_dict(), indent=2) if args.json else plan_summary(plan, args.out))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m pixlake.jobs.plan_index``."""
    return run_main(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
