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
from typing import Optional, Sequence

from pixlake.jobs.common import add_store_flags, emit, run_main


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    """Flags of re-keying (also mounted as ``pixlake rekey``)."""
    parser = parser or argparse.ArgumentParser(prog="python -m pixlake.jobs.rekey", description=__doc__)
    parser.add_argument("--tenant", default="default", help="tenant whose key rotates (default 'default')")
    add_store_flags(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Re-key; returns the exit code."""
    from pixlake.platform.governance.portability import rekey
    from pixlake.platform.governance.service import open_governed_store
    from pixlake.platform.settings import load_settings

    settings = load_settings(args.config, {"store": {"db": args.db, "collection": args.collection}})
    with open_governed_store(settings) as (store, governance):
        emit(json.dumps(rekey(store, governance, args.tenant)))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m pixlake.jobs.rekey``."""
    return run_main(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
