"""Search-quality evaluation job: ``python -m pixlake.jobs.evaluate MANIFEST [flags]``.

Embeds the labelled holdout of MANIFEST with the embed job into its own collection, then
runs text→image queries (phrasings never used in training) and image→image queries through
the store, and reports recall@k and precision@k for k = 1, 5, 10 as a markdown table and,
with ``--json PATH``, as ``{"text_to_image": {...}, "image_to_image": {...}}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from pixlake.jobs.common import add_encoder_flags, add_store_flags, emit, run_main

DEFAULT_COLLECTION = "evaluation"


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    """Flags of the evaluate job (also mounted as ``pixlake evaluate``)."""
    parser = parser or argparse.ArgumentParser(prog="python -m pixlake.jobs.evaluate", description=__doc__)
    parser.add_argument("manifest", help="Parquet manifest with `path` (relative to it), a label column and `split`")
    add_store_flags(parser)
    add_encoder_flags(parser)
    parser.add_argument("--split", default="holdout", help="evaluate rows of this split (default holdout); 'all' for every row")
    parser.add_argument("--label", default="label", help="column whose equality makes a hit relevant (default label)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the metrics as JSON here")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="write the markdown table here")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the job for parsed flags; returns the exit code."""
    from pixlake.platform.evaluation import evaluate, save
    from pixlake.platform.settings import load_settings

    settings = load_settings(
        args.config,
        {"store": {"db": args.db, "collection": args.collection or DEFAULT_COLLECTION},
         "encoder": {"model": args.model, "pretrained": args.pretrained}},
    )
    result = evaluate(str(args.manifest), settings, split=None if args.split == "all" else args.split, label=args.label)
    table = save(result, args.json, args.markdown)
    emit(f"{settings.encoder.model} on {result['rows']} holdout images "
         f"(collection {settings.store.collection}):\n\n{table}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m pixlake.jobs.evaluate``."""
    return run_main(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
