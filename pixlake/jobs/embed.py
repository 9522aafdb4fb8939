"""Bulk embedding job: ``python -m pixlake.jobs.embed SOURCE [flags]``.

Runs unchanged locally (starts Ray) and under ``ray job submit`` (joins the cluster).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from pixlake.jobs.common import add_encoder_flags, add_store_flags, emit, run_main


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    """Flags of the embed job (also mounted as ``pixlake embed``)."""
    parser = parser or argparse.ArgumentParser(prog="python -m pixlake.jobs.embed", description=__doc__)
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
    parser.add_argument("--no-encryption", action="store_true",
                        help="opt out of vector encryption and source sealing (rows stored in plaintext)")
    return parser


def settings_of(args: argparse.Namespace):
    """The job's settings: its flags over the config file and ``PIXLAKE_`` environment."""
    from pixlake.platform.settings import load_settings

    return load_settings(
        args.config,
        {
            "store": {"db": args.db, "collection": args.collection},
            "encoder": {"model": args.model, "pretrained": args.pretrained},
            "job": {"batch_size": args.batch_size, "concurrency": args.concurrency, "tenant": args.tenant, "report": args.report,
                    "allow_manifest_tenants": args.allow_manifest_tenants or None,
                    "metrics_file": args.metrics_file,
                    "gpu_decode": args.gpu_decode or None},
            "governance": {"encryption": False if args.no_encryption else None},
        },
    )


def run(args: argparse.Namespace) -> int:
    """Run the job for parsed flags; returns the exit code."""
    from pixlake.platform.pipeline.job import run_embed_job

    report = run_embed_job(args.source, settings_of(args))
    emit(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m pixlake.jobs.embed``."""
    return run_main(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
