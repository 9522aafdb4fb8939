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
from typing import Optional

from pixlake.jobs.command import Job, JobConfig
from pixlake.jobs.common import add_encoder_flags, add_store_flags, emit, settings_from_flags
from pixlake.platform.settings import Settings

DEFAULT_COLLECTION = "evaluation"


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the evaluate job."""
    parser.add_argument("manifest", help="Parquet manifest with `path` (relative to it), a label column and `split`")
    add_store_flags(parser)
    add_encoder_flags(parser)
    parser.add_argument("--split", default="holdout", help="evaluate rows of this split (default holdout); 'all' for every row")
    parser.add_argument("--label", default="label", help="column whose equality makes a hit relevant (default label)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the metrics as JSON here")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="write the markdown table here")


class EvaluateConfig(JobConfig):
    """What to evaluate (``split`` None: every row) and where to write the metrics."""

    settings: Settings
    manifest: str
    split: Optional[str] = "holdout"
    label: str = "label"
    json_path: Optional[Path] = None
    markdown: Optional[Path] = None


def config_of(args: argparse.Namespace) -> EvaluateConfig:
    """The job's config; its collection is ``evaluation`` unless ``--collection`` names one."""
    settings = settings_from_flags(args, store={"collection": args.collection or DEFAULT_COLLECTION})
    return EvaluateConfig.of(args, settings=settings, manifest=str(args.manifest), json_path=args.json,
                             split=None if args.split == "all" else args.split)


def run(config: EvaluateConfig) -> int:
    """Evaluate; prints the metrics table. Returns the exit code."""
    from pixlake.platform.evaluation import evaluate, save

    settings = config.settings
    result = evaluate(config.manifest, settings, split=config.split, label=config.label)
    table = save(result, config.json_path, config.markdown)
    emit(f"{settings.encoder.model} on {result['rows']} holdout images "
         f"(collection {settings.store.collection}):\n\n{table}")
    return 0


JOB = Job("evaluate", "search-quality evaluation (same as python -m pixlake.jobs.evaluate)", __spec__.name, add_flags,
          config_of, run, verbose=True)
build_parser, main = JOB.build_parser, JOB.main

if __name__ == "__main__":
    sys.exit(main())
