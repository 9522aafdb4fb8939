"""Point a live collection back at a previous version: ``pixlake rollback [--to VERSION]``
(also ``python -m pixlake.jobs.rollback``). Prints the switch as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from pixlake.jobs.command import Job, JobConfig
from pixlake.jobs.common import add_store_flags, emit, settings_from_flags
from pixlake.platform.settings import Settings


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the rollback."""
    add_store_flags(parser)
    parser.add_argument("--to", help="the version to serve (default: the newest one older than the current)")


class RollbackConfig(JobConfig):
    """Which live collection, and the version it should serve (None: the one before)."""

    settings: Settings
    to: Optional[str] = None


def run(config: RollbackConfig) -> int:
    """Roll back; prints the switch as JSON. Returns the exit code."""
    from pixlake.platform.lifecycle import rollback
    from pixlake.platform.store import MilvusStore

    with MilvusStore.configured(config.settings.store) as store:
        emit(json.dumps(rollback(store, config.settings.store.collection, config.to)))
    return 0


JOB = Job("rollback", "point a live collection back at its previous version", __spec__.name, add_flags,
          lambda args: RollbackConfig.of(args, settings=settings_from_flags(args)), run)
build_parser, main = JOB.build_parser, JOB.main

if __name__ == "__main__":
    sys.exit(main())
