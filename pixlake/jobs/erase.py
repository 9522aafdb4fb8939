"""GDPR erasure of one data subject: ``python -m pixlake.jobs.erase --subject ID [flags]``.

Deny-list, key shredding, delete-and-verify in every collection of the database, compaction,
optional purge of owned source images, then a receipt (printed as JSON with ``--json``).
Running it again for the same subject resumes an erasure that was interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys

from pixlake.jobs.command import Job, JobConfig
from pixlake.jobs.common import add_store_flags, emit, settings_from_flags
from pixlake.platform.settings import Settings


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the erasure job."""
    parser.add_argument("--subject", required=True, help="the data subject's id, as given to the embed job")
    parser.add_argument("--tenant", default="default", help="the subject's tenant (default 'default')")
    parser.add_argument("--purge-sources", action="store_true",
                        help="also delete the subject's source images under governance.owned_sources")
    add_store_flags(parser)
    parser.add_argument("--json", action="store_true", help="print the receipt as JSON")


class EraseConfig(JobConfig):
    """Whose data to erase, and how to print the receipt."""

    settings: Settings
    subject: str
    tenant: str = "default"
    purge_sources: bool = False
    print_json: bool = False


def run(config: EraseConfig) -> int:
    """Run (or resume) the erasure; returns the exit code."""
    from pixlake.platform.compliance import open_governed_store
    from pixlake.platform.compliance.erasure import Eraser

    with open_governed_store(config.settings) as (store, governance):
        eraser = Eraser(store, governance, config.settings.governance.owned_sources)
        erasure_id, resumed = eraser.start(config.tenant, config.subject, config.purge_sources)
        receipt = eraser.run(erasure_id)
    if config.print_json:
        emit(json.dumps(receipt, indent=2))
    else:
        emit(f"erasure {receipt['erasure_id']} {'resumed and ' if resumed else ''}{receipt['status']}; "
             f"verified: {receipt['verified']}")
        for step in receipt["steps"]:
            emit(f"  {step['name']:<14} {step['status']:<14} {step['count']:>6}  {step['at']}")
    return 0


JOB = Job("erase", "GDPR erasure of a data subject, with a receipt (same as python -m pixlake.jobs.erase)", __spec__.name,
          add_flags, lambda args: EraseConfig.of(args, settings=settings_from_flags(args), print_json=args.json), run)
build_parser, main = JOB.build_parser, JOB.main

if __name__ == "__main__":
    sys.exit(main())
