"""GDPR erasure of one data subject: ``python -m pixlake.jobs.erase --subject ID [flags]``.

Deny-list, key shredding, delete-and-verify in every collection of the database, compaction,
optional purge of owned source images, then a receipt (printed as JSON with ``--json``).
Running it again for the same subject resumes an erasure that was interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from pixlake.jobs.common import add_store_flags, emit, run_main


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    """Flags of the erasure job (also mounted as ``pixlake erase``)."""
    parser = parser or argparse.ArgumentParser(prog="python -m pixlake.jobs.erase", description=__doc__)
    parser.add_argument("--subject", required=True, help="the data subject's id, as given to the embed job")
    parser.add_argument("--tenant", default="default", help="the subject's tenant (default 'default')")
    parser.add_argument("--purge-sources", action="store_true",
                        help="also delete the subject's source images under governance.owned_sources")
    add_store_flags(parser)
    parser.add_argument("--json", action="store_true", help="print the receipt as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the erasure; returns the exit code."""
    from pixlake.platform.governance.erasure import Eraser
    from pixlake.platform.governance.service import open_governed_store
    from pixlake.platform.settings import load_settings

    settings = load_settings(args.config, {"store": {"db": args.db, "collection": args.collection}})
    with open_governed_store(settings) as (store, governance):
        eraser = Eraser(store, governance, settings.governance.owned_sources)
        erasure_id, resumed = eraser.start(args.tenant, args.subject, args.purge_sources)
        receipt = eraser.run(erasure_id)
    if args.json:
        emit(json.dumps(receipt, indent=2))
    else:
        emit(f"erasure {receipt['erasure_id']} {'resumed and ' if resumed else ''}{receipt['status']}; "
             f"verified: {receipt['verified']}")
        for step in receipt["steps"]:
            emit(f"  {step['name']:<14} {step['status']:<14} {step['count']:>6}  {step['at']}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m pixlake.jobs.erase``."""
    return run_main(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
