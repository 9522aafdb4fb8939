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
from typing import Optional

from pixlake.jobs.command import Job, JobConfig
from pixlake.jobs.common import add_store_flags, emit, settings_from_flags
from pixlake.platform.settings import Settings


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the export."""
    parser.add_argument("--subject", required=True, help="the data subject's id, as given to the embed job")
    parser.add_argument("--tenant", default="default", help="the subject's tenant (default 'default')")
    parser.add_argument("--out", type=Path, help="write the JSON here, mode 0600 (default: standard output)")
    add_store_flags(parser)


class ExportConfig(JobConfig):
    """Whose data to export, and where to."""

    settings: Settings
    subject: str
    tenant: str = "default"
    out: Optional[Path] = None


def run(config: ExportConfig) -> int:
    """Export; returns the exit code."""
    from pixlake.platform.compliance import open_governed_store
    from pixlake.platform.compliance.portability import export_subject
    from pixlake.platform.governance.private import write_private

    with open_governed_store(config.settings) as (store, governance):
        export = export_subject(store, governance, config.tenant, config.subject)
    text = json.dumps(export, indent=2)
    if config.out:
        write_private(config.out, text + "\n")  # the subject's exact embeddings: never world-readable
        emit(f"exported {sum(len(v) for v in export['collections'].values())} items to {config.out}")
    else:
        emit(text)
    return 0


JOB = Job("export", "a data subject's items, decrypted, as JSON (same as python -m pixlake.jobs.export)", __spec__.name,
          add_flags, lambda args: ExportConfig.of(args, settings=settings_from_flags(args)), run)
build_parser, main = JOB.build_parser, JOB.main

if __name__ == "__main__":
    sys.exit(main())
