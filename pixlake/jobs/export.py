"""Data-portability export of one subject: ``python -m pixlake.jobs.export --subject ID [--tenant T]``.

Decrypts the subject's rows in every collection of the database (there is no other copy)
and writes JSON: items with source, metadata, encoder fingerprint and the exact embedding.
``--out`` is created with mode 0600 (only its owner can read the subject's data).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from pixlake.jobs.common import add_store_flags, emit, run_main


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    """Flags of the export (also mounted as ``pixlake export``)."""
    parser = parser or argparse.ArgumentParser(prog="python -m pixlake.jobs.export", description=__doc__)
    parser.add_argument("--subject", required=True, help="the data subject's id, as given to the embed job")
    parser.add_argument("--tenant", default="default", help="the subject's tenant (default 'default')")
    parser.add_argument("--out", type=Path, help="write the JSON here, mode 0600 (default: standard output)")
    add_store_flags(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Export; returns the exit code."""
    from pixlake.platform.governance.portability import export_subject
    from pixlake.platform.governance.private import write_private
    from pixlake.platform.governance.service import open_governed_store
    from pixlake.platform.settings import load_settings

    settings = load_settings(args.config, {"store": {"db": args.db, "collection": args.collection}})
    with open_governed_store(settings) as (store, governance):
        export = export_subject(store, governance, args.tenant, args.subject)
    text = json.dumps(export, indent=2)
    if args.out:
        write_private(args.out, text + "\n")  # the subject's exact embeddings: never world-readable
        emit(f"exported {sum(len(v) for v in export['collections'].values())} items to {args.out}")
    else:
        emit(text)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m pixlake.jobs.export``."""
    return run_main(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
