"""Rotate a tenant's vector key: ``python -m pixlake.jobs.rekey --tenant T``.

Re-encrypts the tenant's rows in every collection under a new key version, decrypting
them from Milvus (no re-embedding), re-scanning until no row is left under an old version
(an embed job may still be writing), then retires the old versions. Exits 2, old versions
kept, when writers keep adding old-version rows. Re-run it after a crash: rows a crash
caught between a server's delete and insert are restored from the governance directory's
journal first.
"""

from __future__ import annotations

import argparse
import json
import sys

from pixlake.jobs.command import Job, JobConfig
from pixlake.jobs.common import add_store_flags, emit, settings_from_flags
from pixlake.platform.settings import Settings


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of re-keying."""
    parser.add_argument("--tenant", default="default", help="tenant whose key rotates (default 'default')")
    add_store_flags(parser)


class RekeyConfig(JobConfig):
    """Whose key rotates, in which database."""

    settings: Settings
    tenant: str = "default"


def run(config: RekeyConfig) -> int:
    """Re-key; prints the outcome as JSON. Returns the exit code."""
    from pixlake.platform.compliance import open_governed_store
    from pixlake.platform.compliance.portability import rekey

    with open_governed_store(config.settings) as (store, governance):
        emit(json.dumps(rekey(store, governance, config.tenant)))
    return 0


JOB = Job("rekey", "rotate a tenant's vector key (same as python -m pixlake.jobs.rekey)", __spec__.name, add_flags,
          lambda args: RekeyConfig.of(args, settings=settings_from_flags(args)), run)
build_parser, main = JOB.build_parser, JOB.main

if __name__ == "__main__":
    sys.exit(main())
