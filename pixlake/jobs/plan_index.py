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
from typing import Optional

from pixlake.jobs.command import Job, JobConfig
from pixlake.jobs.common import add_encoder_flags, add_store_flags, emit, settings_from_flags
from pixlake.platform.settings import Settings


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the planner."""
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


class PlanIndexConfig(JobConfig):
    """What to sample and measure, the target, and where the plan goes."""

    settings: Settings
    tenant: str = "default"
    sample: int = 20_000
    measure_rows: int = 200_000
    queries: int = 500
    text_field: str = "caption"
    text_file: Optional[Path] = None
    target: float = 0.95
    k: int = 10
    segment_rows: Optional[int] = None
    max_rerank_factor: int = 40
    opq: bool = False
    out: Path = Path("index-plan.json")
    print_json: bool = False


def run(config: PlanIndexConfig) -> int:
    """Plan and save the plan; prints its summary (or the plan as JSON). Returns the exit code."""
    from pixlake.platform.index_plan import plan_from_collection, plan_summary

    texts = config.text_file.read_text().splitlines() if config.text_file else None
    plan = plan_from_collection(config.settings, config.tenant, sample=config.sample, measure_rows=config.measure_rows,
                                queries=config.queries, texts=texts, text_field=config.text_field,
                                target=config.target, k=config.k, opq=config.opq, segment_rows=config.segment_rows,
                                max_rerank_factor=config.max_rerank_factor)
    plan.save(config.out)
    emit(json.dumps(plan.to_dict(), indent=2) if config.print_json else plan_summary(plan, config.out))
    return 0


JOB = Job("plan-index", "measure PQ code sizes on a collection and save an index plan "
          "(same as python -m pixlake.jobs.plan_index)", __spec__.name, add_flags,
          lambda args: PlanIndexConfig.of(args, settings=settings_from_flags(args), print_json=args.json), run)
build_parser, main = JOB.build_parser, JOB.main

if __name__ == "__main__":
    sys.exit(main())
