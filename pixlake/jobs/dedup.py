"""Near-duplicate groups of a collection: ``python -m pixlake.jobs.dedup [--tenant T] [--threshold 0.95] [--out groups.parquet] [--json]``.

Reads one tenant's rows through governance (exact vectors decrypted here, subjects being
erased left out), finds every pair at or above the threshold, and groups them: a row is in
at most one group, and every member is at least the threshold from its group's
representative (:mod:`pixlake.platform.dedup`). ``--out`` writes one Parquet row per
member (``group``, ``id``, ``source``, ``score``, ``representative``) with mode 0600, since it
holds opened sources. It also runs as a Ray job (``ray job submit -- python -m
pixlake.jobs.dedup ...``): it needs no Ray of its own.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Optional

from pydantic import field_validator

from pixlake.jobs.command import Job, JobConfig
from pixlake.jobs.common import add_store_flags, emit, settings_from_flags
from pixlake.platform.dedup import DEFAULT_THRESHOLD, check_threshold
from pixlake.platform.settings import Settings


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the dedup job."""
    parser.add_argument("--tenant", default="default", help="the tenant whose rows are grouped (default 'default')")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"cosine at or above which two rows are near-duplicates, in (0, 1] (default {DEFAULT_THRESHOLD})")
    parser.add_argument("--out", type=Path, help="write the groups here as Parquet, one row per member, mode 0600")
    parser.add_argument("--json", action="store_true", help="print the JSON summary instead of one line")
    add_store_flags(parser)


class DedupConfig(JobConfig):
    """Which rows to group, how near, and where the groups go."""

    settings: Settings
    tenant: str = "default"
    threshold: float = DEFAULT_THRESHOLD
    out: Optional[Path] = None
    print_json: bool = False

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: float) -> float:
        return check_threshold(value)


def run(config: DedupConfig) -> int:
    """Find the groups; returns the exit code."""
    import json

    import numpy as np

    from pixlake.platform.dedup import find_duplicates
    from pixlake.platform.errors import StoreError
    from pixlake.platform.governance.private import write_private
    from pixlake.platform.query import open_collection

    started = time.monotonic()
    ids, sources, vectors = [], [], []
    with open_collection(config.settings) as collection:
        if not collection.store.exists():
            raise StoreError(f"no collection {config.settings.store.collection} in {config.settings.store.db}")
        for page in collection.read_pages(config.tenant):  # bounded memory: the vectors only are kept
            if not page:  # every row of the page belongs to an erasure under way
                continue
            ids += [r["id"] for r in page]
            sources += [r["source"] for r in page]
            vectors.append(np.asarray([r["vector"] for r in page], np.float32))
    dim = vectors[0].shape[1] if vectors else 0
    found = find_duplicates(ids, sources, np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32),
                            config.threshold)
    if config.out is not None:
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(found.table(), buffer)
        write_private(config.out, buffer.getvalue())
    summary = found.summary(time.monotonic() - started)
    if config.print_json:
        emit(json.dumps(summary))
    else:
        emit(f"{summary['groups']} groups of near-duplicates ({summary['rows_in_groups']} of {summary['rows']} rows) at "
             f"cosine >= {summary['threshold']} in {summary['seconds']:.1f} s" + (f"; written to {config.out}" if config.out else ""))
    return 0


JOB = Job("dedup", "groups of near-duplicate images in a collection (same as python -m pixlake.jobs.dedup)", __spec__.name,
          add_flags, lambda args: DedupConfig.of(args, settings=settings_from_flags(args), print_json=args.json), run)
build_parser, main = JOB.build_parser, JOB.main

if __name__ == "__main__":
    sys.exit(main())
