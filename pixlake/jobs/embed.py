"""Bulk embedding job: ``python -m pixlake.jobs.embed SOURCE [flags]``.

Runs unchanged locally (starts Ray) and under ``ray job submit`` (joins the cluster).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pixlake.jobs.command import Job, JobConfig
from pixlake.jobs.common import add_encoder_flags, add_store_flags, emit, settings_from_flags
from pixlake.platform.settings import Settings


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the embed job."""
    parser.add_argument("source", help="folder, glob, Parquet file/dataset or WebDataset .tar shards; local or s3://, gs://, file://")
    add_store_flags(parser)
    add_encoder_flags(parser)
    parser.add_argument("--batch-size", type=int, help="images per encoder batch (default 64)")
    parser.add_argument("--concurrency", type=int, help="encoder actors (default: one per GPU, else 1)")
    parser.add_argument("--tenant", help="tenant of every row (default 'default'); a manifest row naming another is "
                        "rejected (tenant_mismatch) unless --allow-manifest-tenants")
    parser.add_argument("--allow-manifest-tenants", action="store_true",
                        help="let a manifest's tenant column (Parquet) or field (WebDataset .json) choose each row's tenant")
    parser.add_argument("--gpu-decode", action="store_true",
                        help="decode JPEGs on the encoder's GPU (nvJPEG); CPU tasks then only check headers")
    parser.add_argument("--report", type=Path, help="write the JSON job report here")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the summary")
    parser.add_argument("--metrics-file", type=Path,
                        help="write the run's Prometheus metrics here (node_exporter textfile collector, Pushgateway)")
    parser.add_argument("--near-duplicates", choices=["keep", "skip", "link"],
                        help="an image near a stored one or an earlier one of the run (cosine >= --near-threshold): keep "
                        "it (default), skip it (not stored; the report lists it) or link it (near_duplicate_of in its meta)")
    parser.add_argument("--near-threshold", type=float, help="cosine in (0, 1] for --near-duplicates (default 0.95)")
    parser.add_argument("--no-encryption", action="store_true",
                        help="opt out of vector encryption and source sealing (rows stored in plaintext)")


def settings_of(args: argparse.Namespace) -> Settings:
    """The job's settings: its flags over the config file and ``PIXLAKE_`` environment."""
    return settings_from_flags(
        args,
        job={"batch_size": args.batch_size, "concurrency": args.concurrency, "tenant": args.tenant, "report": args.report,
             "allow_manifest_tenants": args.allow_manifest_tenants or None, "metrics_file": args.metrics_file,
             "gpu_decode": args.gpu_decode or None, "near_duplicates": args.near_duplicates,
             "near_threshold": args.near_threshold},
        governance={"encryption": False if args.no_encryption else None},
    )


class EmbedConfig(JobConfig):
    """What to embed, where, and how to print the report."""

    source: str
    settings: Settings
    print_json: bool = False


def run(config: EmbedConfig) -> int:
    """Embed ``config.source``; prints the summary (or the JSON report). Returns the exit code."""
    from pixlake.jobs.console import progress_display
    from pixlake.platform.collection import crossover_hint
    from pixlake.platform.pipeline.job import run_embed_job

    with progress_display() as progress:
        report = run_embed_job(config.source, config.settings, progress=progress)
    emit(json.dumps(report.to_dict(), indent=2) if config.print_json else report.summary())
    hint = crossover_hint(config.settings, report.collection_count)
    if hint:
        print(hint, file=sys.stderr)
    return 0


JOB = Job("embed", "embed a corpus (same as python -m pixlake.jobs.embed)", __spec__.name, add_flags,
          lambda args: EmbedConfig.of(args, settings=settings_of(args), print_json=args.json), run, verbose=True)
build_parser, main = JOB.build_parser, JOB.main

if __name__ == "__main__":
    sys.exit(main())
